#include "cpu_attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace mha_cpu {
namespace {

// ---- dot and axpy, portable and AVX2/FMA (picked at run time: no -march=native in the build) ----

float dot_scalar(const float* a, const float* b, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_scalar(float alpha, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const float* b, int n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  __m256 acc = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  float total = _mm_cvtss_f32(s);
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

__attribute__((target("avx2,fma"))) void axpy_avx2(float alpha, const float* x, float* y, int n) {
  const __m256 a = _mm256_set1_ps(alpha);
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

struct Kernels {
  float (*dot)(const float*, const float*, int);
  void (*axpy)(float, const float*, float*, int);
  bool avx2;
};

const Kernels& kernels() {
  static const Kernels k = [] {
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return avx2 ? Kernels{dot_avx2, axpy_avx2, true} : Kernels{dot_scalar, axpy_scalar, false};
  }();
  return k;
}

// One query head of one token: softmax(q . K[0..n) * scale) V[0..n) into out. `scores` holds n floats.
void attend_one(const llm_kv_cache_view& kv, int slot, int kv_head, int head_dim, int n, float scale, const float* q,
                float* out, float* scores, const Kernels& k) {
  const float* K = static_cast<const float*>(kv.k);
  const float* V = static_cast<const float*>(kv.v);
  float max_score = -INFINITY;
  for (int p = 0; p < n; ++p) {
    scores[p] = k.dot(q, K + llm_kv_offset(&kv, slot, p, kv_head), head_dim) * scale;
    max_score = std::max(max_score, scores[p]);
  }
  float sum = 0.0f;
  for (int p = 0; p < n; ++p) {
    scores[p] = std::exp(scores[p] - max_score);
    sum += scores[p];
  }
  const float inv_sum = 1.0f / sum;
  std::fill(out, out + head_dim, 0.0f);
  for (int p = 0; p < n; ++p) k.axpy(scores[p] * inv_sum, V + llm_kv_offset(&kv, slot, p, kv_head), out, head_dim);
}

}  // namespace

bool uses_avx2() { return kernels().avx2; }

std::string validate(const llm_attention_shape& shape, const llm_attention_args& args, bool decode) {
  if (args.struct_size < sizeof(llm_attention_args)) return "llm_attention_args.struct_size is too small";
  if (!args.q || !args.out || !args.q_start || !args.kv_len || !args.seq_slot || !args.kv)
    return "a required pointer (q, out, q_start, kv_len, seq_slot or kv) is NULL";
  if (args.dtype != LLM_DTYPE_F32 || args.kv->dtype != LLM_DTYPE_F32) return "mha_cpu computes fp32 only";
  if (args.kv->device_kind != LLM_DEVICE_CPU) return "the KV cache is not in host memory";
  if (args.num_seqs < 1 || args.num_seqs > shape.max_batch)
    return "num_seqs " + std::to_string(args.num_seqs) + " is outside [1, " + std::to_string(shape.max_batch) + "]";
  if (args.kv->layout == LLM_KV_LAYOUT_PAGED && (!args.kv->block_table || args.kv->block_size < 1))
    return "a paged KV cache needs a block table and a positive block size";
  if (args.q_start[0] != 0) return "q_start[0] must be 0";
  for (int i = 0; i < args.num_seqs; ++i) {
    const int q_len = args.q_start[i + 1] - args.q_start[i];
    if (q_len < 0) return "q_start is not ascending at sequence " + std::to_string(i);
    if (decode && q_len != 1) return "decode needs exactly one query per sequence (sequence " + std::to_string(i) + ")";
    if (args.kv_len[i] < q_len || args.kv_len[i] > shape.max_context)
      return "kv_len[" + std::to_string(i) + "] = " + std::to_string(args.kv_len[i]) + " is outside [" +
             std::to_string(q_len) + ", " + std::to_string(shape.max_context) + "]";
  }
  if (args.q_start[args.num_seqs] != args.total_q_tokens) return "q_start[num_seqs] != total_q_tokens";
  return "";
}

namespace {

struct AttendJob {
  const llm_attention_shape* shape;
  const llm_attention_args* args;
};

// Items [begin, end) of the flattened (token, query head) grid.
void attend_items(void* arg, int64_t begin, int64_t end) {
  const auto& job = *static_cast<const AttendJob*>(arg);
  const llm_attention_shape& shape = *job.shape;
  const llm_attention_args& args = *job.args;
  const Kernels& k = kernels();
  const int heads = shape.num_q_heads, group = shape.num_q_heads / shape.num_kv_heads;
  const float* q = static_cast<const float*>(args.q);
  float* out = static_cast<float*>(args.out);
  thread_local std::vector<float> scores;  // grows to the longest context seen, per thread
  int seq = 0;
  for (int64_t item = begin; item < end; ++item) {
    const int t = static_cast<int>(item / heads), h = static_cast<int>(item % heads);
    while (t >= args.q_start[seq + 1]) ++seq;  // items ascend, so the sequence only moves forward
    const int q_len = args.q_start[seq + 1] - args.q_start[seq];
    const int pos = args.kv_len[seq] - q_len + (t - args.q_start[seq]);
    const int n = args.causal ? pos + 1 : args.kv_len[seq];
    if (scores.size() < static_cast<size_t>(n)) scores.resize(n);
    attend_one(*args.kv, args.seq_slot[seq], h / group, shape.head_dim, n, args.softmax_scale,
               q + t * args.q_token_stride + h * args.q_head_stride,
               out + t * args.out_token_stride + h * args.out_head_stride, scores.data(), k);
  }
}

}  // namespace

void attend(const llm_attention_shape& shape, const llm_attention_args& args, const llm_host_services* host) {
  AttendJob job{&shape, &args};
  const int64_t items = static_cast<int64_t>(args.total_q_tokens) * shape.num_q_heads;
  if (host && host->struct_size >= sizeof(llm_host_services) && host->parallel_for && host->num_threads > 1)
    host->parallel_for(host->host, items, attend_items, &job);
  else
    attend_items(&job, 0, items);
}

}  // namespace mha_cpu
