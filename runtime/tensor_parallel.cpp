#include "tensor_parallel.h"

#include <algorithm>

#include "error.h"

namespace llm {

ShardPlan shard_plan(const ModelConfig& c, int world, int rank) {
  if (world < 1 || rank < 0 || rank >= world) fail("tensor parallel: rank {} of a world of {} ranks", rank, world);
  auto need = [&](int n, const char* what) {
    if (n % world != 0)
      fail("tensor parallel over {} ranks: the model's {} {} do not divide among them (each rank must hold whole {})",
           world, n, what, what);
  };
  need(c.n_heads, "query heads");
  need(c.n_kv_heads, "KV heads");
  need(c.hidden_dim, "SwiGLU rows");
  ShardPlan p;
  p.world = world, p.rank = rank;
  p.q_heads = c.n_heads / world, p.q_head0 = rank * p.q_heads;
  p.kv_heads = c.n_kv_heads / world, p.kv_head0 = rank * p.kv_heads;
  p.hidden = c.hidden_dim / world, p.hidden0 = rank * p.hidden;
  p.local = c;
  p.local.n_heads = p.q_heads;
  p.local.n_kv_heads = p.kv_heads;
  p.local.dim = p.q_heads * c.head_dim();  // the attention width of this rank; head size unchanged
  p.local.hidden_dim = p.hidden;
  return p;
}

ShardedWeights::ShardedWeights(const ModelWeights& full, const ModelConfig& c, const ShardPlan& p) {
  const int hd = c.head_dim();
  w_.token_embedding = full.token_embedding;
  w_.classifier = full.classifier;
  w_.rms_final = full.rms_final;
  for (const LayerWeights& L : full.layers) {
    LayerWeights s;
    s.rms_att = L.rms_att;
    s.rms_ffn = L.rms_ffn;
    s.wq = rows(L.wq, p.q_head0 * hd, p.q_heads * hd);
    s.wk = rows(L.wk, p.kv_head0 * hd, p.kv_heads * hd);
    s.wv = rows(L.wv, p.kv_head0 * hd, p.kv_heads * hd);
    s.wo = cols(L.wo, p.q_head0 * hd, p.q_heads * hd);
    s.w1 = rows(L.w1, p.hidden0, p.hidden);
    s.w3 = rows(L.w3, p.hidden0, p.hidden);
    s.w2 = cols(L.w2, p.hidden0, p.hidden);
    w_.layers.push_back(s);
  }
}

// Whole rows are contiguous: a view (Q8_0 groups lie inside rows, so the scales slice the same way).
Matrix ShardedWeights::rows(const Matrix& m, int row0, int n) const {
  Matrix s = m;
  s.rows = n;
  const std::size_t first = static_cast<std::size_t>(row0) * m.cols;
  if (m.type == WeightType::F32) {
    s.f32 = m.f32 + first;
  } else {
    s.q = m.q + first;
    s.scales = m.scales + first / m.group_size;
  }
  return s;
}

// Columns [col0, col0 + n) of every row: copied. Int8 stays int8 when the slice keeps whole groups.
Matrix ShardedWeights::cols(const Matrix& m, int col0, int n) {
  Matrix s;
  s.rows = m.rows, s.cols = n;
  if (m.type == WeightType::Q8_0 && col0 % m.group_size == 0 && n % m.group_size == 0) {
    owned_q_.emplace_back(static_cast<std::size_t>(m.rows) * n);
    owned_f32_.emplace_back(static_cast<std::size_t>(m.rows) * n / m.group_size);
    for (int r = 0; r < m.rows; ++r) {
      const std::size_t src = static_cast<std::size_t>(r) * m.cols + col0;
      std::copy_n(m.q + src, n, owned_q_.back().data() + static_cast<std::size_t>(r) * n);
      std::copy_n(m.scales + src / m.group_size, n / m.group_size,
                  owned_f32_.back().data() + static_cast<std::size_t>(r) * n / m.group_size);
    }
    s.type = WeightType::Q8_0, s.q = owned_q_.back().data(), s.scales = owned_f32_.back().data();
    s.group_size = m.group_size;
    return s;
  }
  owned_f32_.emplace_back(static_cast<std::size_t>(m.rows) * n);
  std::vector<float> row(static_cast<std::size_t>(m.cols));
  for (int r = 0; r < m.rows; ++r) {
    m.dequantize_row(r, row.data());
    std::copy_n(row.data() + col0, n, owned_f32_.back().data() + static_cast<std::size_t>(r) * n);
  }
  s.type = WeightType::F32, s.f32 = owned_f32_.back().data();
  return s;
}

ThreadCollective::ThreadCollective(int world) : world_(world), buffers_(static_cast<std::size_t>(world), nullptr) {}

void ThreadCollective::barrier() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (aborted_) fail("tensor parallel: another rank failed; this step is abandoned");
  const long gen = generation_;
  if (++arrived_ == world_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
  } else {
    cv_.wait(lock, [&] { return generation_ != gen || aborted_; });
    if (generation_ == gen) fail("tensor parallel: another rank failed; this step is abandoned");
  }
}

void ThreadCollective::abort() {
  std::lock_guard<std::mutex> lock(mutex_);
  aborted_ = true;
  cv_.notify_all();
}

void ThreadCollective::all_reduce_sum(int rank, float* data, std::size_t count) {
  if (world_ == 1) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    buffers_[static_cast<std::size_t>(rank)] = data;
  }
  barrier();  // every buffer is in place
  std::vector<float> sum(count, 0.0f);
  for (int r = 0; r < world_; ++r) {
    const float* b = buffers_[static_cast<std::size_t>(r)];
    for (std::size_t i = 0; i < count; ++i) sum[i] += b[i];
  }
  barrier();  // nobody overwrites a buffer another rank still reads
  std::copy(sum.begin(), sum.end(), data);
}

}  // namespace llm
