#include "llama_cpu.h"

#include <algorithm>
#include <cmath>

#include "error.h"

namespace llm {

LlamaCpu::LlamaCpu(const Checkpoint& checkpoint, std::unique_ptr<BackendChain> chain, ThreadPool& pool, int max_batch,
                   int max_context, const TensorParallelRank* tp)
    : config_(checkpoint.config()),
      local_(tp ? tp->plan->local : config_),
      w_(tp ? *tp->weights : checkpoint.weights()),
      tp_(tp ? *tp : TensorParallelRank{}),
      chain_(std::move(chain)),
      pool_(pool),
      cache_(local_, max_batch, max_context),
      rope_table_(rope_table(config_, max_context)) {}

void LlamaCpu::all_reduce(float* x, int tokens) {
  if (tp_.collective && tp_.plan->world > 1)
    tp_.collective->all_reduce_sum(tp_.plan->rank, x, static_cast<size_t>(tokens) * config_.dim);
}

void LlamaCpu::grow_buffers(int tokens, int chunks) {
  const auto t = static_cast<size_t>(tokens);
  auto grow = [](std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
  };
  grow(x_, t * config_.dim);
  grow(xb_, t * config_.dim);
  grow(xb2_, t * config_.dim);
  grow(q_, t * local_.dim);
  grow(k_, t * local_.kv_dim());
  grow(v_, t * local_.kv_dim());
  grow(hb_, t * local_.hidden_dim);
  grow(hb2_, t * local_.hidden_dim);
  grow(logits_, static_cast<size_t>(chunks) * config_.vocab_size);
  grow(last_, static_cast<size_t>(chunks) * config_.dim);
}

void LlamaCpu::linear(std::initializer_list<cpu::Product> group, const float* x, int tokens) {
  const cpu::QuantizedActivations* xq = nullptr;
  for (const cpu::Product& p : group)
    if (p.w->type == WeightType::Q8_0) {
      cpu::quantize_rows(x, tokens, p.w->cols, p.w->group_size, xq_);
      xq = &xq_;
      break;
    }
  cpu::matmul_group(group.begin(), static_cast<int>(group.size()), x, xq, tokens, pool_);
}

const float* LlamaCpu::forward(const std::vector<SequenceChunk>& chunks) {
  const ModelConfig& c = config_;
  // The residual stream is full width; the attention heads and SwiGLU rows are this model's (all of them,
  // or its rank's share under tensor parallelism).
  const int dim = c.dim, qd = local_.dim, kv_dim = local_.kv_dim(), hidden = local_.hidden_dim, head_dim = c.head_dim();
  const int n_chunks = static_cast<int>(chunks.size());

  // Flatten the chunks into one batch of tokens, each with its slot and position.
  const int tokens = check_chunks(chunks, c, cache_.slots(), cache_.max_context());
  int max_q_len = 0, max_kv_len = 0;
  for (const auto& ch : chunks) {
    const int n = static_cast<int>(ch.tokens.size());
    max_q_len = std::max(max_q_len, n);
    max_kv_len = std::max(max_kv_len, ch.start_pos + n);
  }
  grow_buffers(tokens, n_chunks);
  pos_.clear(), slot_.clear(), q_start_.assign(1, 0), kv_len_.clear(), seq_slot_.clear();
  for (const auto& ch : chunks) {
    for (size_t j = 0; j < ch.tokens.size(); ++j) {
      pos_.push_back(ch.start_pos + static_cast<int>(j));
      slot_.push_back(ch.slot);
    }
    q_start_.push_back(q_start_.back() + static_cast<int32_t>(ch.tokens.size()));
    kv_len_.push_back(ch.start_pos + static_cast<int32_t>(ch.tokens.size()));
    seq_slot_.push_back(ch.slot);
  }

  // Token embeddings into the residual stream.
  float* x = x_.data();
  int t = 0;
  for (const auto& ch : chunks)
    for (int token : ch.tokens) w_.token_embedding.dequantize_row(token, x + static_cast<size_t>(t++) * dim);

  llm_attention_args args = packed_attention_args(local_, tokens, n_chunks, max_q_len, max_kv_len, LLM_DTYPE_F32);
  args.q = q_.data();
  args.out = xb_.data();
  args.q_start = q_start_.data();
  args.kv_len = kv_len_.data();
  args.seq_slot = seq_slot_.data();
  const bool decode = max_q_len == 1;

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w_.layers[l];

    // attention rmsnorm, then the q, k, v projections (the normed input quantized once for all three)
    for (int i = 0; i < tokens; ++i) cpu::rmsnorm(&xb_[i * dim], &x[i * dim], L.rms_att, dim, c.rms_norm_eps);
    linear({{&L.wq, q_.data()}, {&L.wk, k_.data()}, {&L.wv, v_.data()}}, xb_.data(), tokens);

    // RoPE on q and k, then k and v go straight into the cache rows of their positions
    for (int i = 0; i < tokens; ++i) {
      const float* cs = &rope_table_[static_cast<size_t>(pos_[i]) * head_dim];
      cpu::rope(&q_[i * qd], local_.n_heads, head_dim, cs);
      cpu::rope(&k_[i * kv_dim], local_.n_kv_heads, head_dim, cs);
      std::copy_n(&k_[i * kv_dim], kv_dim, cache_.key(l, slot_[i], pos_[i]));
      std::copy_n(&v_[i * kv_dim], kv_dim, cache_.value(l, slot_[i], pos_[i]));
    }

    // grouped-query attention through the backend chain, into xb
    const llm_kv_cache_view view = cache_.view(l);
    args.layer = l;
    args.kv = &view;
    if (decode)
      chain_->decode(args);
    else
      chain_->prefill(args);

    // output projection (a partial sum under tensor parallelism, completed by the all-reduce) and residual
    linear({{&L.wo, xb2_.data()}}, xb_.data(), tokens);
    all_reduce(xb2_.data(), tokens);
    for (size_t i = 0; i < static_cast<size_t>(tokens) * dim; ++i) x[i] += xb2_[i];

    // ffn rmsnorm, SwiGLU: w2(silu(w1 x) * w3 x), residual
    for (int i = 0; i < tokens; ++i) cpu::rmsnorm(&xb_[i * dim], &x[i * dim], L.rms_ffn, dim, c.rms_norm_eps);
    linear({{&L.w1, hb_.data()}, {&L.w3, hb2_.data()}}, xb_.data(), tokens);
    cpu::swiglu(hb_.data(), hb2_.data(), tokens * hidden);
    linear({{&L.w2, xb2_.data()}}, hb_.data(), tokens);
    all_reduce(xb2_.data(), tokens);
    for (size_t i = 0; i < static_cast<size_t>(tokens) * dim; ++i) x[i] += xb2_[i];
  }

  // final rmsnorm and the classifier, for the last token of each chunk only
  for (int s = 0; s < n_chunks; ++s)
    cpu::rmsnorm(&last_[s * dim], &x[static_cast<size_t>(q_start_[s + 1] - 1) * dim], w_.rms_final, dim,
                 c.rms_norm_eps);
  linear({{&w_.classifier, logits_.data()}}, last_.data(), n_chunks);
  return logits_.data();
}

}  // namespace llm
