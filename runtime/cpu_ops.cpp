#include "cpu_ops.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "error.h"

namespace llm::cpu {
namespace {

bool have_avx2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
}

// ---- fp32: an R x T tile of dot products, two accumulators per (row, token) ----
// Each (row, token) pair sums 8-lane partials over k into two accumulators (even and odd blocks of 8,
// so two FMA chains overlap), adds them, folds the lanes in one fixed order and adds the scalar tail:
// the same sequence for every tile shape, hence bitwise-equal results for prefill and decode.

template <int R, int T>
void tile_f32_scalar(const float* w, int ldw, const float* x, int ldx, int n, float* out, int ldo) {
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float even[8] = {0, 0, 0, 0, 0, 0, 0, 0}, odd[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int k = 0;
      for (; k + 16 <= n; k += 16)
        for (int l = 0; l < 8; ++l) {
          even[l] += w[r * ldw + k + l] * x[t * ldx + k + l];
          odd[l] += w[r * ldw + k + 8 + l] * x[t * ldx + k + 8 + l];
        }
      for (; k + 8 <= n; k += 8)
        for (int l = 0; l < 8; ++l) even[l] += w[r * ldw + k + l] * x[t * ldx + k + l];
      float lanes[8];
      for (int l = 0; l < 8; ++l) lanes[l] = even[l] + odd[l];
      float s = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
      for (; k < n; ++k) s += w[r * ldw + k] * x[t * ldx + k];
      out[t * ldo + r] = s;
    }
}

__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  // lanes (0+4, 1+5, 2+6, 3+7), then (0+2, 1+3), then (0+1): matches tile_f32_scalar's fold
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R, int T>
__attribute__((target("avx2,fma"))) void tile_f32_avx2(const float* w, int ldw, const float* x, int ldx, int n,
                                                       float* out, int ldo) {
  __m256 even[R][T], odd[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) even[r][t] = odd[r][t] = _mm256_setzero_ps();
  int k = 0;
  for (; k + 16 <= n; k += 16) {
    __m256 x0[T], x1[T];
    for (int t = 0; t < T; ++t) {
      x0[t] = _mm256_loadu_ps(x + t * ldx + k);
      x1[t] = _mm256_loadu_ps(x + t * ldx + k + 8);
    }
    for (int r = 0; r < R; ++r) {
      const __m256 w0 = _mm256_loadu_ps(w + r * ldw + k), w1 = _mm256_loadu_ps(w + r * ldw + k + 8);
      for (int t = 0; t < T; ++t) {
        even[r][t] = _mm256_fmadd_ps(w0, x0[t], even[r][t]);
        odd[r][t] = _mm256_fmadd_ps(w1, x1[t], odd[r][t]);
      }
    }
  }
  for (; k + 8 <= n; k += 8)
    for (int r = 0; r < R; ++r) {
      const __m256 w0 = _mm256_loadu_ps(w + r * ldw + k);
      for (int t = 0; t < T; ++t) even[r][t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * ldx + k), even[r][t]);
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float s = hsum(_mm256_add_ps(even[r][t], odd[r][t]));
      for (int kk = k; kk < n; ++kk) s += w[r * ldw + kk] * x[t * ldx + kk];
      out[t * ldo + r] = s;
    }
}

// ---- Q8_0: int8 x int8 per group of 32, scaled by both groups' scales ----

template <int R, int T>
void tile_q8_scalar(const Matrix& w, int row0, const QuantizedActivations& x, int t0, float* out, int ldo) {
  const int n = w.cols, gs = w.group_size, groups = n / gs;
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      const int8_t* wq = w.q + static_cast<size_t>(row0 + r) * n;
      const float* ws = w.scales + static_cast<size_t>(row0 + r) * groups;
      const int8_t* xq = x.q.data() + static_cast<size_t>(t0 + t) * n;
      const float* xs = x.scales.data() + static_cast<size_t>(t0 + t) * groups;
      float s = 0.0f;
      for (int g = 0; g < groups; ++g) {
        int32_t dot = 0;
        for (int k = 0; k < gs; ++k) dot += int32_t(wq[g * gs + k]) * int32_t(xq[g * gs + k]);
        s += static_cast<float>(dot) * (ws[g] * xs[g]);
      }
      out[(t0 + t) * ldo + row0 + r] = s;
    }
}

__attribute__((target("avx2,fma"))) inline __m256 dot32_i8(const int8_t* a, const int8_t* b) {
  const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a));
  const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
  // |a| * (b with a's sign): unsigned x signed bytes, pairwise into int16, then into int32
  const __m256i prod16 = _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vb, va));
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(prod16, _mm256_set1_epi16(1)));
}

template <int R, int T>
__attribute__((target("avx2,fma"))) void tile_q8_avx2(const Matrix& w, int row0, const QuantizedActivations& x, int t0,
                                                      float* out, int ldo) {
  const int n = w.cols, groups = n / 32;
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  const int8_t* wq = w.q + static_cast<size_t>(row0) * n;
  const float* ws = w.scales + static_cast<size_t>(row0) * groups;
  const int8_t* xq = x.q.data() + static_cast<size_t>(t0) * n;
  const float* xs = x.scales.data() + static_cast<size_t>(t0) * groups;
  for (int g = 0; g < groups; ++g)
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) {
        const __m256 d = dot32_i8(wq + r * n + g * 32, xq + t * n + g * 32);
        acc[r][t] = _mm256_fmadd_ps(d, _mm256_set1_ps(ws[r * groups + g] * xs[t * groups + g]), acc[r][t]);
      }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) out[(t0 + t) * ldo + row0 + r] = hsum(acc[r][t]);
}

// Rows go to threads in blocks, tokens in blocks. Few tokens (decode): one row at a time, so each thread streams the
// weights front to back, which the hardware prefetcher follows best (measured on the 2-core CI machine, 32000x288 fp32:
// one row 62-71 GB/s, four interleaved rows 30 GB/s). Many tokens (prefill): register tiles, as arithmetic dominates;
// fp32 tiles are 2 rows x 3 tokens, since 2 accumulators per pair leave no registers for more.
constexpr int kF32RowBlock = 2, kF32TokenBlock = 3, kQ8Block = 4;

// Tile tables indexed [rows-1][tokens-1], so runtime sizes pick compile-time tiles.
template <int R, int T>
void f32_tile(bool avx2, const float* w, const float* x, int n, float* out, int ldo) {
  if (avx2)
    tile_f32_avx2<R, T>(w, n, x, n, n, out, ldo);
  else
    tile_f32_scalar<R, T>(w, n, x, n, n, out, ldo);
}
using F32Tile = void (*)(bool, const float*, const float*, int, float*, int);
template <int R>
struct F32Row {
  static constexpr F32Tile fns[kF32TokenBlock] = {f32_tile<R, 1>, f32_tile<R, 2>, f32_tile<R, 3>};
};
const F32Tile* const kF32Tiles[kF32RowBlock] = {F32Row<1>::fns, F32Row<2>::fns};

template <int R, int T>
void q8_tile(bool avx2, const Matrix& w, int row0, const QuantizedActivations& x, int t0, float* out, int ldo) {
  if (avx2)
    tile_q8_avx2<R, T>(w, row0, x, t0, out, ldo);
  else
    tile_q8_scalar<R, T>(w, row0, x, t0, out, ldo);
}
using Q8Tile = void (*)(bool, const Matrix&, int, const QuantizedActivations&, int, float*, int);
template <int R>
struct Q8Row {
  static constexpr Q8Tile fns[4] = {q8_tile<R, 1>, q8_tile<R, 2>, q8_tile<R, 3>, q8_tile<R, 4>};
};
const Q8Tile* const kQ8Tiles[4] = {Q8Row<1>::fns, Q8Row<2>::fns, Q8Row<3>::fns, Q8Row<4>::fns};

}  // namespace

const char* isa_name() { return have_avx2() ? "avx2+fma" : "scalar"; }

void quantize_rows(const float* x, int tokens, int cols, int group_size, QuantizedActivations& out) {
  out.tokens = tokens;
  out.cols = cols;
  out.group_size = group_size;
  out.q.resize(static_cast<size_t>(tokens) * cols);
  out.scales.resize(static_cast<size_t>(tokens) * cols / group_size);
  const size_t groups = static_cast<size_t>(tokens) * cols / group_size;
  for (size_t g = 0; g < groups; ++g) {
    const float* src = x + g * group_size;
    float max_abs = 0.0f;
    for (int k = 0; k < group_size; ++k) max_abs = std::max(max_abs, std::fabs(src[k]));
    const float scale = max_abs / 127.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    out.scales[g] = scale;
    for (int k = 0; k < group_size; ++k) out.q[g * group_size + k] = static_cast<int8_t>(std::lround(src[k] * inv));
  }
}

void matmul_group(const Product* products, int count, const float* x, const QuantizedActivations* xq, int tokens,
                  ThreadPool& pool) {
  if (count < 1 || count > kMaxGroup) fail("matmul_group: {} products (expected 1 to {})", count, kMaxGroup);
  const bool avx2 = have_avx2();
  // Row blocks of all products, concatenated: block b belongs to the product i with first[i] <= b < first[i + 1].
  // Int8 keeps 4-row tiles even for one token: its per-group chain (convert, scale, add) is latency-bound
  // and four rows give four independent chains (one row measured 30-40% slower).
  int row_block[kMaxGroup];
  int64_t first[kMaxGroup + 1] = {0};
  for (int i = 0; i < count; ++i) {
    const Matrix& w = *products[i].w;
    if (w.type == WeightType::Q8_0 && (!xq || xq->cols != w.cols || xq->group_size != w.group_size))
      fail("matmul_group: a Q8_0 matrix needs its input quantized with {} columns in groups of {}", w.cols,
           w.group_size);
    row_block[i] = w.type == WeightType::Q8_0 ? kQ8Block : tokens >= kF32TokenBlock ? kF32RowBlock : 1;
    first[i + 1] = first[i] + (w.rows + row_block[i] - 1) / row_block[i];
  }
  // One contiguous chunk per thread: streams stay sequential.
  const int64_t total = first[count];
  pool.parallel_for(total, (total + pool.size() - 1) / pool.size(), [&](int64_t begin, int64_t end) {
    int i = 0;
    for (int64_t b = begin; b < end; ++b) {
      while (b >= first[i + 1]) ++i;
      const Matrix& w = *products[i].w;
      float* out = products[i].out;
      const int n = w.cols, rows = w.rows;
      const int r0 = static_cast<int>(b - first[i]) * row_block[i];
      const int nr = std::min(row_block[i], rows - r0);
      if (w.type == WeightType::F32) {
        for (int t0 = 0; t0 < tokens; t0 += kF32TokenBlock)
          kF32Tiles[nr - 1][std::min(kF32TokenBlock, tokens - t0) - 1](avx2, w.f32 + static_cast<size_t>(r0) * n,
                                                                       x + static_cast<size_t>(t0) * n, n,
                                                                       out + static_cast<size_t>(t0) * rows + r0, rows);
      } else {
        for (int t0 = 0; t0 < tokens; t0 += kQ8Block)
          kQ8Tiles[nr - 1][std::min(kQ8Block, tokens - t0) - 1](avx2 && w.group_size == 32, w, r0, *xq, t0, out, rows);
      }
    }
  });
}

void matmul(const Matrix& w, const float* x, int tokens, float* out, ThreadPool& pool) {
  const Product p{&w, out};
  matmul_group(&p, 1, x, nullptr, tokens, pool);
}

void matmul_q8(const Matrix& w, const QuantizedActivations& x, float* out, ThreadPool& pool) {
  const Product p{&w, out};
  matmul_group(&p, 1, nullptr, &x, x.tokens, pool);
}

void rmsnorm(float* out, const float* x, const float* gain, int n, float eps) {
  float ss = 0.0f;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int i = 0; i < n; ++i) out[i] = gain[i] * (x[i] * inv);
}

void rope(float* vec, int n_heads, int head_dim, const float* cos_sin_row) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = vec + h * head_dim;
    for (int i = 0; i < half; ++i) {
      const float c = cos_sin_row[2 * i], s = cos_sin_row[2 * i + 1];
      const float a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * c - b * s;
      v[2 * i + 1] = a * s + b * c;
    }
  }
}

void swiglu(float* gate, const float* up, int n) {
  for (int i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace llm::cpu
