// The CUDA-core kernel (see gemv.h), the choice between it and the tensor-core kernel (gemv_tc.cu), and
// LLM_GEMV.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <tuple>
#include <type_traits>
#include <utility>

#include "argmax_key.h"
#include "cuda_check.h"
#include "dtype_convert.cuh"
#include "error.h"
#include "gemv.h"
#include "mma.cuh"
#include "pdl.cuh"

namespace llm::cuda {

// gemv_tc.cu: the tensor-core kernel (bf16/fp16, 1 to kGemvMaxTokens tokens) and its plan.
int gemv_tensor_core(GemvEpilogue epilogue, const GemvArgs& args, DType type, cudaStream_t stream,
                     const GemvTuning& tuning);
GemvTuning gemv_tensor_core_plan(GemvEpilogue epilogue, const GemvArgs& args, DType type, const GemvTuning& tuning);

namespace {

constexpr int kWarps = 8;  // warps per block; each warp owns one pair of weight rows

// acc += dot(w, x) over the elements of two 32-bit words of type T.
template <typename T>
__device__ __forceinline__ float dot_word(uint32_t w, uint32_t x, float acc);
template <>
__device__ __forceinline__ float dot_word<__nv_bfloat16>(uint32_t w, uint32_t x, float acc) {
  acc = fmaf(__uint_as_float(w << 16), __uint_as_float(x << 16), acc);
  return fmaf(__uint_as_float(w & 0xffff0000u), __uint_as_float(x & 0xffff0000u), acc);
}
template <>
__device__ __forceinline__ float dot_word<__half>(uint32_t w, uint32_t x, float acc) {
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&w));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&x));
  return fmaf(a.y, b.y, fmaf(a.x, b.x, acc));
}
template <>
__device__ __forceinline__ float dot_word<float>(uint32_t w, uint32_t x, float acc) {
  return fmaf(__uint_as_float(w), __uint_as_float(x), acc);
}

template <typename T>
__device__ __forceinline__ float dot16(const uint4& w, const uint4& x, float acc) {
  acc = dot_word<T>(w.x, x.x, acc);
  acc = dot_word<T>(w.y, x.y, acc);
  acc = dot_word<T>(w.z, x.z, acc);
  return dot_word<T>(w.w, x.w, acc);
}

// acc = dot(w, x) over the elements of a 16-byte chunk of T, x already in fp32.
template <typename T>
__device__ __forceinline__ float dot16_f32(const uint4& w, const float* x, float acc) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (sizeof(T) == 4) {
      acc = fmaf(__uint_as_float(words[i]), x[i], acc);
    } else {
      float2 f;
      if constexpr (std::is_same_v<T, __nv_bfloat16>)
        f = make_float2(__uint_as_float(words[i] << 16), __uint_as_float(words[i] & 0xffff0000u));
      else
        f = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
      acc = fmaf(f.y, x[2 * i + 1], fmaf(f.x, x[2 * i], acc));
    }
  }
  return acc;
}

// The activations of a product: rows of T, or (Norm) fp32 residual rows and the RMSNorm's gain, whose
// squares are summed on the way (ss) and whose scale 1 / rms is applied to the totals at the end.
template <typename T, bool Norm>
struct Activations {
  static constexpr int kPer = 16 / sizeof(T);  // elements per 16-byte chunk of weights
  const void* x;
  const float* gain;
  int cols;

  // Element i of token t, in fp32 (gain applied), its square added to ss.
  __device__ __forceinline__ float element(int t, int i, float& ss) const {
    if constexpr (Norm) {
      const float v = static_cast<const float*>(x)[static_cast<int64_t>(t) * cols + i];
      ss = fmaf(v, v, ss);
      return v * gain[i];
    } else {
      return to_f32(static_cast<const T*>(x)[static_cast<int64_t>(t) * cols + i]);
    }
  }

  // acc[0] += a . x, acc[1] += b . x over chunk c (elements c * kPer ...) of token t.
  __device__ __forceinline__ void dot_chunk(const uint4& a, const uint4& b, int t, int c, float& acc0, float& acc1,
                                            float& ss) const {
    if constexpr (Norm) {
      const float* xr = static_cast<const float*>(x) + static_cast<int64_t>(t) * cols + c * kPer;
      float v[kPer];
#pragma unroll
      for (int j = 0; j < kPer; j += 4) {
        const uint4 xv = load_activation16(xr + j);
        const float4 g = *reinterpret_cast<const float4*>(gain + c * kPer + j);
        v[j] = __uint_as_float(xv.x), v[j + 1] = __uint_as_float(xv.y);
        v[j + 2] = __uint_as_float(xv.z), v[j + 3] = __uint_as_float(xv.w);
        ss = fmaf(v[j], v[j], fmaf(v[j + 1], v[j + 1], fmaf(v[j + 2], v[j + 2], fmaf(v[j + 3], v[j + 3], ss))));
        v[j] *= g.x, v[j + 1] *= g.y, v[j + 2] *= g.z, v[j + 3] *= g.w;
      }
      acc0 = dot16_f32<T>(a, v, acc0);
      acc1 = dot16_f32<T>(b, v, acc1);
    } else {
      const uint4 xv = load_activation16(static_cast<const uint4*>(x) + static_cast<int64_t>(t) * cols / kPer + c);
      acc0 = dot16<T>(a, xv, acc0);
      acc1 = dot16<T>(b, xv, acc1);
    }
  }
};

// The sum over the block's warps of one value each (lane 0's), added in warp order: the same total, the
// same every run, in every thread. Every thread of the block calls it.
__device__ __forceinline__ float sum_over_warps(float v) {
  __shared__ float warp_values[kWarps];
  if ((threadIdx.x & 31) == 0) warp_values[threadIdx.x >> 5] = v;
  __syncthreads();
  float sum = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) sum += warp_values[w];
  return sum;
}

// The partial sums of squares of a prepared norm (GemvArgs::norm_parts). Each thread of the block loads up
// to kEach of them right after the wait, beside the weights, and the block adds them once its warps have
// their sums (total(): every thread calls it), in the same order every run. Loading them into registers
// keeps their round trip off the path to the first x loads, where summing them there would put it on.
struct NormParts {
  static constexpr int kEach = 2, kThreads = kWarps * 32;  // in registers up to 512 partial sums; more at the end
  float v[kEach];
  __device__ __forceinline__ void load(const GemvArgs& p) {
#pragma unroll
    for (int i = 0; i < kEach; ++i) {
      const int at = threadIdx.x + i * kThreads;
      v[i] = at < p.norm_parts_count ? p.norm_parts[at] : 0.0f;
    }
  }
  __device__ __forceinline__ float total(const GemvArgs& p) const {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < kEach; ++i) s += v[i];
    for (int at = threadIdx.x + kEach * kThreads; at < p.norm_parts_count; at += kThreads) s += p.norm_parts[at];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return sum_over_warps(s);
  }
};

// acc[i][t] = row_i . x[t] over the 16-byte chunks [c0, c1) of the warp's two rows (a, b), and ss[t] the
// sum of x[t]'s squares over them (Norm), reduced over the warp: every lane ends with the totals. Lanes
// take chunks round-robin, kUnroll of them per row loaded before any is used (see unrolled_for for how
// many). The warp whose range ends the row (c1 == the row's chunks) also takes the elements past the last
// whole chunk. An inactive warp (past the last row) reads nothing and ends with zeros. after_wait() runs
// once the kernel before has finished, while the first weights are on their way: the epilogue's own loads
// go there rather than after the sums (an L2 round trip or two at the end of every warp's path). (Before
// the wait only weights are read: tools/pdl_check.) Parts: the norm's partial sums are loaded there too
// (combine_slices adds them). Ragged: a slice shorter than a batch (rows 960 wide: 3.75 chunks a lane) goes
// out as one partial batch, each lane loading only its chunks in range; otherwise the chunks past the last
// whole batch are loaded one at a time after the wait, a DRAM round trip each on the warp's path (see
// unrolled_for for where that is the faster).
struct Nothing {
  __device__ void operator()() const {}
};
template <typename T, int NT, int kUnroll, bool Norm, bool Parts, bool Ragged, typename AfterWait = Nothing>
__device__ __forceinline__ void warp_dot2(const T* a, const T* b, const Activations<T, Norm>& x, const GemvArgs& p,
                                          NormParts& parts, int c0, int c1, bool active, float (&acc)[2][NT],
                                          float (&ss)[NT], const AfterWait& after_wait = AfterWait{}) {
  constexpr int kPer = 16 / sizeof(T);  // elements per chunk
  const int lane = threadIdx.x & 31, cols = x.cols;
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[0][t] = acc[1][t] = ss[t] = 0.0f;
  // 16-byte chunks need rows that start on 16 bytes: otherwise (an odd shape) every element is a tail.
  const int chunks = cols % kPer == 0 ? cols / kPer : 0;
  int c = c0 + lane;
  const int end = active ? min(c1, chunks) : c0;
  uint4 wa[kUnroll], wb[kUnroll];
  // A batch: kUnroll chunks of each row, all of them (a whole batch) or, Ragged, those in range.
  auto load_batch = [&] {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if constexpr (Ragged)
        if (c + u * 32 >= end) continue;
      wa[u] = load_stream(a + static_cast<int64_t>(c + u * 32) * kPer);
      wb[u] = load_stream(b + static_cast<int64_t>(c + u * 32) * kPer);
    }
  };
  auto more = [&] {
    if constexpr (Ragged) return c < end;
    return c + (kUnroll - 1) * 32 < end;
  };
  bool full = more();
  if (full) load_batch();
  // The first weights are on their way; x (and the outputs) may still be in the previous kernel's hands.
  wait_for_previous_kernel();
  after_wait();
  if constexpr (Parts) parts.load(p);
  while (full) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if constexpr (Ragged)
        if (c + u * 32 >= end) continue;
#pragma unroll
      for (int t = 0; t < NT; ++t) x.dot_chunk(wa[u], wb[u], t, c + u * 32, acc[0][t], acc[1][t], ss[t]);
    }
    c += kUnroll * 32;
    full = more();
    if (full) load_batch();
  }
  for (; c < end; c += 32) {
    const uint4 wa = load_stream(a + static_cast<int64_t>(c) * kPer);
    const uint4 wb = load_stream(b + static_cast<int64_t>(c) * kPer);
#pragma unroll
    for (int t = 0; t < NT; ++t) x.dot_chunk(wa, wb, t, c, acc[0][t], acc[1][t], ss[t]);
  }
  if (active && c1 >= chunks)
    for (int i = chunks * kPer + lane; i < cols; i += 32)  // a tail shorter than a chunk
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float xv = x.element(t, i, ss[t]);
        acc[0][t] = fmaf(to_f32(a[i]), xv, acc[0][t]);
        acc[1][t] = fmaf(to_f32(b[i]), xv, acc[1][t]);
      }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      acc[0][t] += __shfl_xor_sync(0xffffffffu, acc[0][t], o);
      acc[1][t] += __shfl_xor_sync(0xffffffffu, acc[1][t], o);
      if constexpr (Norm) ss[t] += __shfl_xor_sync(0xffffffffu, ss[t], o);
    }
  }
}

// The warps of a row unit (a pair of rows; Swiglu: a row of W1 and W3) are `splits` consecutive warps of
// a block, each a slice of the columns. Their totals are added through shared memory in slice order (the
// same order every run), and the first warp of the unit goes on with them; the others return false.
// Then the RMSNorm's 1 / rms scales the totals.
// Parts: ss is the whole row's, from the norm's partial sums (every warp of the block calls this), not
// added over the slices.
template <int NT, bool Norm, bool Parts>
__device__ __forceinline__ bool combine_slices(int splits, int slice, bool valid, float (&acc)[2][NT], float (&ss)[NT],
                                               int cols, float eps, const NormParts& parts, const GemvArgs& p) {
  if constexpr (Parts) ss[0] = parts.total(p);
  if (splits > 1) {
    __shared__ float part[kWarps][3][NT];
    const int w = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0)
#pragma unroll
      for (int t = 0; t < NT; ++t) part[w][0][t] = acc[0][t], part[w][1][t] = acc[1][t], part[w][2][t] = ss[t];
    __syncthreads();
    if (slice != 0 || !valid) return false;
    for (int s = 1; s < splits; ++s)
#pragma unroll
      for (int t = 0; t < NT; ++t)
        acc[0][t] += part[w + s][0][t], acc[1][t] += part[w + s][1][t], ss[t] += Parts ? 0.0f : part[w + s][2][t];
  } else if (!valid) {
    return false;
  }
  if constexpr (Norm || Parts) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float inv = rsqrtf(ss[t] / cols + eps);
      acc[0][t] *= inv, acc[1][t] *= inv;
    }
  }
  return true;
}

// Split: row units are `splits` warps (a compile-time 1 otherwise, which keeps the registers of the
// whole-row kernels as they were: 62-70 against 72-80 for four chunks a lane, and 102-106 against 120-138
// for eight). Norm: the RMSNorm on the fp32 x; Parts (one token): prepared by the product before
// (norm_parts). An AddF32 at one token writes the next norm's input where next_x is set.
template <typename T, int NT, int U, GemvEpilogue E, bool Norm, bool Parts, bool Split, bool Ragged>
__device__ __forceinline__ void gemv_body(const GemvArgs& p, int split_count, int block) {
  const int splits = Split ? split_count : 1;
  allow_next_kernel();
  const int lane = threadIdx.x & 31;
  const int gw = block * kWarps + (threadIdx.x >> 5), warp = gw / splits, slice = gw % splits;
  const int cols = p.cols;
  const Activations<T, Norm> x{p.x, p.norm_gain, cols};
  // This warp's slice of the row's chunks (splits > 1 only where the row is whole chunks)
  constexpr int kPer = 16 / sizeof(T);
  const int row_chunks = cols / kPer, c0 = row_chunks * slice / splits, c1 = row_chunks * (slice + 1) / splits;
  float acc[2][NT], ss[NT];
  NormParts parts;  // (Parts)
  if constexpr (E == GemvEpilogue::Swiglu) {
    const int r = warp;
    const bool valid = r < p.rows[0];
    const int64_t off = static_cast<int64_t>(valid ? r : 0) * cols;
    warp_dot2<T, NT, U, Norm, Parts, Ragged>(static_cast<const T*>(p.w[0]) + off, static_cast<const T*>(p.w[1]) + off,
                                             x, p, parts, c0, c1, valid, acc, ss);
    if (!combine_slices<NT, Norm, Parts>(splits, slice, valid, acc, ss, cols, p.norm_eps, parts, p)) return;
    if (lane < NT) {  // lane t writes token t (the totals are in every lane; pick with a constant index)
#pragma unroll
      for (int t = 0; t < NT; ++t)
        if (t == lane) {
          const float g = acc[0][t];
          static_cast<T*>(p.out)[static_cast<int64_t>(t) * p.rows[0] + r] =
              from_f32<T>(g / (1.0f + __expf(-g)) * acc[1][t]);
        }
    }
  } else if constexpr (E == GemvEpilogue::QkvRope) {
    // Row pair (2w, 2w + 1) of the q | k | v row space; every section has an even number of rows.
    int r = 2 * warp, m = 0;
    if (r >= p.rows[0]) {
      r -= p.rows[0], m = 1;
      if (r >= p.rows[1]) r -= p.rows[1], m = 2;
    }
    const bool valid = !(m == 2 && r >= p.rows[2]);
    // (selected, not indexed: a run-time index into the parameter array would copy it to local memory)
    const void* wm = m == 0 ? p.w[0] : m == 1 ? p.w[1] : p.w[2];
    const T* w = static_cast<const T*>(wm) + static_cast<int64_t>(valid ? r : 0) * cols;
    // Lane t reads token t's position, cache slot and rotation beside the weights, not after the sums.
    int pos = 0, slot = 0;
    float rc = 1.0f, rs = 0.0f;
    warp_dot2<T, NT, U, Norm, Parts, Ragged>(w, w + cols, x, p, parts, c0, c1, valid, acc, ss, [&] {
      if (lane < NT && valid) {
        pos = p.pos[lane];
        if (m > 0) slot = p.slot[lane];
        if (m < 2) {
          const float* cs = p.cos_sin + static_cast<int64_t>(pos) * p.head_dim + (r % p.head_dim);
          rc = cs[0], rs = cs[1];
        }
      }
    });
    if (!combine_slices<NT, Norm, Parts>(splits, slice, valid, acc, ss, cols, p.norm_eps, parts, p)) return;
    if (lane < NT) {
#pragma unroll
      for (int t = 0; t < NT; ++t)
        if (t == lane) {
          float a = acc[0][t], b = acc[1][t];
          if (m < 2) {  // RoPE on the pair (llama2.c's adjacent layout)
            const float ra = a * rc - b * rs, rb = a * rs + b * rc;
            a = ra, b = rb;
          }
          T* dst;
          if (m == 0) {
            dst = static_cast<T*>(p.out) + static_cast<int64_t>(t) * p.rows[0] + r;
          } else {
            const int64_t row = static_cast<int64_t>(slot) * p.seq_stride + static_cast<int64_t>(pos) * p.rows[1];
            dst = static_cast<T*>(m == 1 ? p.k_cache : p.v_cache) + row + r;
          }
          dst[0] = from_f32<T>(a);
          dst[1] = from_f32<T>(b);
        }
    }
  } else {
    const int rows = p.rows[0], r = 2 * warp;
    const bool valid = r < rows;
    const bool second = r + 1 < rows;  // an odd last row: the warp computes it twice, writes it once
    const T* w = static_cast<const T*>(p.w[0]) + static_cast<int64_t>(valid ? r : 0) * cols;
    if constexpr (E == GemvEpilogue::AddF32) {
      // Lane t reads token t's residual once the kernel before (which adds into it too) is done (and at one
      // token, the next norm's gain for the rows).
      float* y = static_cast<float*>(p.out) + static_cast<int64_t>(lane) * rows + r;
      const bool adds = lane < NT && valid && slice == 0;
      const bool next = NT == 1 && p.next_x != nullptr;  // (the same in every thread)
      float y0 = 0.0f, y1 = 0.0f, g0 = 0.0f, g1 = 0.0f;
      warp_dot2<T, NT, U, Norm, Parts, Ragged>(w, second ? w + cols : w, x, p, parts, c0, c1, valid, acc, ss, [&] {
        if (adds) {
          y0 = y[0];
          if (second) y1 = y[1];
          if (next) g0 = p.next_gain[r], g1 = second ? p.next_gain[r + 1] : 0.0f;
        }
      });
      const bool writes = combine_slices<NT, Norm, Parts>(splits, slice, valid, acc, ss, cols, p.norm_eps, parts, p);
      float sq = 0.0f;  // (next) this warp's share of the sum of squares of y
      if (writes && lane < NT) {
#pragma unroll
        for (int t = 0; t < NT; ++t)
          if (t == lane) {
            const float a = y0 + acc[0][t], b = y1 + acc[1][t];
            y[0] = a;
            if (second) y[1] = b;
            if (next) {
              T* nx = static_cast<T*>(p.next_x) + r;
              nx[0] = from_f32<T>(a * g0);
              if (second) nx[1] = from_f32<T>(b * g1);
              sq = second ? fmaf(a, a, b * b) : a * a;
            }
          }
      }
      if (next) {  // the block's partial sum
        const float total = sum_over_warps(sq);
        if (threadIdx.x == 0) p.next_parts[block] = total;
      }
    } else {  // (apart from AddF32's: one body for both changed the classifier's registers, 58 -> 64 and 70 -> 64)
      warp_dot2<T, NT, U, Norm, Parts, Ragged>(w, second ? w + cols : w, x, p, parts, c0, c1, valid, acc, ss);
      const bool writes = combine_slices<NT, Norm, Parts>(splits, slice, valid, acc, ss, cols, p.norm_eps, parts, p);
      auto store = [&](int t) {  // token t's logits of the warp's rows
        float* y = static_cast<float*>(p.out) + static_cast<int64_t>(t) * rows + r;
        y[0] = acc[0][t];
        if (second) y[1] = acc[1][t];
      };
      if constexpr (E == GemvEpilogue::StoreF32) {
        if (!writes) return;
        if (lane < NT) {
#pragma unroll
          for (int t = 0; t < NT; ++t)
            if (t == lane) store(t);
        }
      } else {  // ArgmaxF32: and one atomic a warp into a slot of its token's (argmax_key.h)
        if (writes && lane < NT) {
#pragma unroll
          for (int t = 0; t < NT; ++t)
            if (t == lane) {
              store(t);
              unsigned long long key = argmax_key(__float_as_uint(acc[0][t]), r);
              if (second)
                key = max(key, static_cast<unsigned long long>(argmax_key(__float_as_uint(acc[1][t]), r + 1)));
              if (key)
                atomicMax(
                    reinterpret_cast<unsigned long long*>(p.argmax_keys) + argmax_slot_word(t, warp % kArgmaxSlots),
                    key);
            }
        }
      }
    }
  }
}

template <typename T, int NT, int U, GemvEpilogue E, bool Norm, bool Parts, bool Split, bool Ragged>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const GemvArgs p, int split_count) {
  if constexpr (Parts && !Ragged && (U == 4 || U == 8)) {
    // A loop over the grid that runs once: ptxas schedules and allocates the body differently inside it
    // (Llama-2-7B's q/k/v product 72 -> 80 registers, fewer instructions), and decode at batch 1 measured
    // faster so on the H200: Llama-2-7B +1.4%, TinyLlama +0.7% (docs/PERFORMANCE.md). Rows of 3 chunks a lane
    // (stories110M) measured 2.5% slower that way. Only batch 1's kernels with a prepared norm (Parts) were
    // measured; the others keep the plain body and the registers their plans were chosen with (the ragged ones
    // were measured with it).
    for (int b = blockIdx.x; b < static_cast<int>(gridDim.x); b += gridDim.x) {
      gemv_body<T, NT, U, E, Norm, Parts, Split, Ragged>(p, split_count, b);
      __syncthreads();  // (what a second pass would need before reusing the block's shared sums; as measured)
    }
  } else {
    gemv_body<T, NT, U, E, Norm, Parts, Split, Ragged>(p, split_count, static_cast<int>(blockIdx.x));
  }
}

// The residual add at one token, held to the blocks a SM it had before it also prepared the next norm
// (four for up to four chunks a lane, two for eight and eleven): the split plan counts on them (7B's wo and
// w2 went from halves of rows to whole rows at three a SM, 16.4 -> 19.6 us).
template <typename T, int U, bool Split, bool Ragged>
__global__ void __launch_bounds__(kWarps * 32, U <= 4 ? 4 : 2) gemv_add_kernel(const GemvArgs p, int split_count) {
  gemv_body<T, 1, U, GemvEpilogue::AddF32, false, false, Split, Ragged>(p, split_count, static_cast<int>(blockIdx.x));
}

// The one-token SwiGLU that stages rows (gemv.h, gemv_stages_swiglu): norm prepared, rows of exactly one
// batch of kStageChunks chunks a lane. Blocks below `staged_blocks` own kWarps units in registers, as the
// plain kernel's do, and `staged_units` more whose W1 and W3 rows (contiguous: two bulk copies) the copy
// engine brings into shared memory; the other blocks own kWarps units. Thread 0 issues the copies once its
// own last register loads have landed: at the block's start they went out while the DRAM was still busy
// with the output product's and SwiGLU's register loads, and cost more than they saved (session 30,
// docs/PERFORMANCE.md). A unit's sums are gemv_body's (the same chunks to the same lanes, the same adds in
// the same order): the same bits as the plain kernel.
constexpr int kStageChunks = 8;      // 16-byte chunks a lane: rows of 2,048 bf16/fp16
constexpr int kStagedUnits = 12;     // a staged block's units in shared memory: 96 KB, two blocks a SM
constexpr int kMaxStagedUnits = 13;  // 104 KB: two blocks still fit an SM's 228 KB

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32, 2)
    gemv_swiglu_staged_kernel(const GemvArgs p, int staged_blocks, int staged_units) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char stage[];
  __shared__ __align__(8) uint64_t landed;
  constexpr int kPer = 16 / sizeof(T);
  const int cols = p.cols, rows = p.rows[0];
  const int b = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const bool staged = b < staged_blocks;
  const int base =
      staged ? b * (kWarps + staged_units) : staged_blocks * (kWarps + staged_units) + (b - staged_blocks) * kWarps;
  const int u = base + warp;
  const bool valid = u < rows;
  const int64_t off = static_cast<int64_t>(valid ? u : 0) * cols;
  uint4 wa[kStageChunks], wb[kStageChunks];
  if (valid) {
#pragma unroll
    for (int k = 0; k < kStageChunks; ++k) {
      wa[k] = load_stream(static_cast<const T*>(p.w[0]) + off + static_cast<int64_t>(lane + 32 * k) * kPer);
      wb[k] = load_stream(static_cast<const T*>(p.w[1]) + off + static_cast<int64_t>(lane + 32 * k) * kPer);
    }
  }
  // The staged units: rows [base + kWarps, base + kWarps + n) of W1, then of W3 (n the same in every thread)
  const int n = staged ? max(0, min(staged_units, rows - (base + kWarps))) : 0;
  const uint32_t bytes = static_cast<uint32_t>(n) * static_cast<uint32_t>(cols * sizeof(T));
  const uint32_t bar = shared_address(&landed);
  if (threadIdx.x == 0 && n > 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    if (valid) {  // an instruction that reads the last loads: the thread waits for them to land
      uint32_t landed_word;
      asm volatile("add.u32 %0, %1, %2;"
                   : "=r"(landed_word)
                   : "r"(wa[kStageChunks - 1].w), "r"(wb[kStageChunks - 1].w));
    }
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(2 * bytes) : "memory");
    const int64_t first = static_cast<int64_t>(base + kWarps) * cols;
    for (int m = 0; m < 2; ++m)
      asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                       shared_address(stage + m * bytes)),
                   "l"(static_cast<const T*>(p.w[m]) + first), "r"(bytes), "r"(bar)
                   : "memory");
  }
  allow_next_kernel();
  wait_for_previous_kernel();
  NormParts parts;
  parts.load(p);
  const uint4* x = static_cast<const uint4*>(p.x);
  // One unit's totals over the warp (every lane ends with them): rows in registers (kStaged false: wa and wb,
  // indexed only with constants, so that they stay registers) or in shared memory (s1, s3).
  auto sums = [&](auto staged_rows, const uint4* s1, const uint4* s3, float& g, float& v) {
    constexpr bool kStaged = decltype(staged_rows)::value;
    g = 0.0f, v = 0.0f;
#pragma unroll
    for (int k = 0; k < kStageChunks; ++k) {
      const uint4 xv = load_activation16(x + lane + 32 * k);
      if constexpr (kStaged) {
        g = dot16<T>(s1[lane + 32 * k], xv, g);
        v = dot16<T>(s3[lane + 32 * k], xv, v);
      } else {
        g = dot16<T>(wa[k], xv, g);
        v = dot16<T>(wb[k], xv, v);
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      g += __shfl_xor_sync(0xffffffffu, g, o);
      v += __shfl_xor_sync(0xffffffffu, v, o);
    }
  };
  float g, v;
  sums(std::false_type{}, nullptr, nullptr, g, v);
  const float inv = rsqrtf(parts.total(p) / cols + p.norm_eps);  // (every thread: a block-wide sum, a barrier)
  auto store = [&](int r) {
    const float gi = g * inv, vi = v * inv;
    if (lane == 0) static_cast<T*>(p.out)[r] = from_f32<T>(gi / (1.0f + __expf(-gi)) * vi);
  };
  if (valid) store(u);
  if (n == 0) return;
  uint32_t done = 0;
  while (!done)
    asm volatile("{ .reg .pred q; mbarrier.try_wait.parity.shared::cta.b64 q, [%1], 0; selp.u32 %0, 1, 0, q; }"
                 : "=r"(done)
                 : "r"(bar)
                 : "memory");
  const int row_chunks = cols / kPer;
  const uint4* s1 = reinterpret_cast<const uint4*>(stage);
  const uint4* s3 = reinterpret_cast<const uint4*>(stage + bytes);
  for (int j = warp; j < n; j += kWarps) {
    sums(std::true_type{}, s1 + static_cast<size_t>(j) * row_chunks, s3 + static_cast<size_t>(j) * row_chunks, g, v);
    store(base + kWarps + j);
  }
#endif
}

using GemvKernelFn = void (*)(const GemvArgs, int);

// Row units of a product: pairs of rows (an odd last row alone), or Swiglu's rows of W1 with W3.
int64_t row_units(GemvEpilogue e, const GemvArgs& p) {
  switch (e) {
    case GemvEpilogue::QkvRope: return (p.rows[0] + p.rows[1] + p.rows[2]) / 2;
    case GemvEpilogue::Swiglu: return p.rows[0];
    default: return (p.rows[0] + 1) / 2;
  }
}

// norm: 0 none, 1 the RMSNorm in the kernel (norm_gain), 2 the RMSNorm prepared before it (norm_parts, one
// token).
template <typename T, int NT, int U, bool Split, bool Ragged = false>
GemvKernelFn kernel_for(GemvEpilogue e, int norm) {
  using E = GemvEpilogue;
  auto pick = [norm](auto epilogue) -> GemvKernelFn {
    constexpr E k = decltype(epilogue)::value;
    if constexpr (NT == 1)
      if (norm == 2) return gemv_kernel<T, NT, U, k, false, true, Split, Ragged>;
    return norm == 1 ? gemv_kernel<T, NT, U, k, true, false, Split, Ragged>
                     : gemv_kernel<T, NT, U, k, false, false, Split, Ragged>;
  };
  switch (e) {
    case E::QkvRope: return pick(std::integral_constant<E, E::QkvRope>{});
    case E::Swiglu: return pick(std::integral_constant<E, E::Swiglu>{});
    case E::AddF32:  // (never after a norm)
      if constexpr (NT == 1)
        return gemv_add_kernel<T, U, Split, Ragged>;
      else
        return gemv_kernel<T, NT, U, E::AddF32, false, false, Split, Ragged>;
    case E::ArgmaxF32: return pick(std::integral_constant<E, E::ArgmaxF32>{});
    default: return pick(std::integral_constant<E, E::StoreF32>{});
  }
}

// Chunks a lane per batch, by the bytes of a warp's slice of a row. Four, but at one token, where a slice
// is 4 KB (2048 columns of bf16), 1.5 KB (768) or 5.5 KB (2816) the batch is the whole slice, eight, three
// or eleven chunks, in flight before the wait on the kernel before; an 11 KB slice (5632) is two whole
// batches of eleven instead of five of four and two single chunks. H200, decode at batch 1 (whole rows):
// TinyLlama 994 -> 1,050 (eight) -> 1,085-1,093 tok/s (eleven), stories110M 3,715-3,724 -> 4,056-4,073
// (three). Eight for 7B's 8 KB rows (253 -> 240), and a row's last partial batch loaded as one batch
// (TinyLlama 1,050 -> 1,012-1,017), measured slower: docs/PERFORMANCE.md.
// A slice shorter than a batch of four goes out ragged (warp_dot2): rows 960 wide (3.75 chunks a lane),
// where lanes 24-31 loaded their three chunks one at a time after the wait. H200, MobileLLM-350M's shape,
// decode tok/s: 1,409-1,416 -> 1,655-1,662 at batch 1, 1,131-1,138 -> 1,294-1,296 a sequence at batch 2.
// Longer slices ragged too (a last partial batch in place of single chunks: 1,152, 1,280 and 1,600 wide,
// Llama-2-7B's 11,008) measured 2-11% slower, as did batches of six or eight for them (90-128 registers,
// two blocks a SM): docs/PERFORMANCE.md. A split slice shorter than four chunks a lane (plan_tokens allows
// them where a whole row is not one whole batch) is one ragged batch too.
constexpr size_t kLaneChunkBytes = 32 * 16;  // one 16-byte chunk for every lane of a warp
constexpr int batch_chunks(size_t slice_bytes, bool split) {
  if (split)  // (not eight: 120-138 registers, and fewer warps resident, where splitting wants more)
    return slice_bytes == 22 * kLaneChunkBytes || slice_bytes == 11 * kLaneChunkBytes ? 11 : 4;
  if (slice_bytes == 8 * kLaneChunkBytes) return 8;
  if (slice_bytes == 3 * kLaneChunkBytes) return 3;
  if (slice_bytes == 22 * kLaneChunkBytes) return 11;
  return 4;
}
template <typename T, int NT>
GemvKernelFn unrolled_for(size_t slice_bytes, bool split, GemvEpilogue e, int norm) {
  const bool ragged = slice_bytes < 4 * kLaneChunkBytes;
  if constexpr (NT == 1) {  // (only one token splits rows)
    switch (batch_chunks(slice_bytes, split)) {
      case 8: return kernel_for<T, NT, 8, false>(e, norm);
      case 3: return kernel_for<T, NT, 3, false>(e, norm);
      case 11: return split ? kernel_for<T, NT, 11, true>(e, norm) : kernel_for<T, NT, 11, false>(e, norm);
      default:
        if (split) return ragged ? kernel_for<T, NT, 4, true, true>(e, norm) : kernel_for<T, NT, 4, true>(e, norm);
    }
  }
  return ragged ? kernel_for<T, NT, 4, false, true>(e, norm) : kernel_for<T, NT, 4, false>(e, norm);
}

// Warps of `kernel` that fit on the device at once (its occupancy, per device and kernel, asked once).
int resident_warps(GemvKernelFn kernel) {
  static std::mutex mutex;
  static std::map<std::pair<int, GemvKernelFn>, int> known;
  int device = 0;
  LLM_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  auto [it, added] = known.try_emplace({device, kernel}, 0);
  if (added) {
    int sms = 0, blocks = 0;
    LLM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    LLM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kWarps * 32, 0));
    it->second = sms * blocks * kWarps;
  }
  return it->second;
}

// LLM_GEMV_SPLITS, read once: every product launched on the per-token path consults it.
int splits_from_env_once() {
  static const int splits = gemv_splits_from_env();
  return splits;
}

// A row unit (a pair of rows; Swiglu: a row of W1 and of W3) is `splits` warps, each a slice of the
// columns, where whole rows would leave at least half of the resident warps idle, and with them half the
// bytes that could be in flight: Llama-2-7B's wo and w2 (2,048 pairs), TinyLlama's w2 (1,024). Split,
// every warp of TinyLlama's w2 loads its whole slice before the wait on the SwiGLU product, where whole
// rows were two batches. The split is chosen by how full the waves of warps are, one wave preferred; a
// slice keeps at least four chunks a lane, so that its loads stay batched, or at least one (one ragged
// batch, all before the wait) where a whole row is not one whole batch of its kernel: a ragged batch, single
// chunks after the last batch, or batches after the first loaded after the wait (MobileLLM's 960-1,600
// columns and 2,560-4,352 hidden units). H200, batch 1: MobileLLM-350M 1,677-1,687 -> 1,818-1,835 tok/s,
// 1B 810-814 -> 897-903, 1.5B 600-603 -> 643-650, 600M (its 3,072 hidden units three whole batches)
// 1,282-1,283 -> 1,347-1,350; TinyLlama and Llama-2-7B level. The same bound for every row cost stories110M
// 8% and TinyLlama 1% (rows of one batch: 768 and 2,048 columns). Products of several waves split in two
// only where that doubles the warps resident (below). H200, batch 1: Llama-2-7B 254 -> 263-264 tok/s,
// TinyLlama 1,111-1,116 -> 1,162-1,163; TinyLlama's q/k/v (1,280 pairs, 61% of the warps busy) split in two
// added 4.9 us a layer where whole rows added 3.7-4.0 (docs/PERFORMANCE.md).
struct CudaCorePlan {
  int splits = 1;
  GemvKernelFn kernel = nullptr;
};

template <typename T, int NT>
CudaCorePlan plan_tokens(GemvEpilogue e, const GemvArgs& p, int forced) {
  constexpr int kPer = 16 / sizeof(T);
  const int norm = p.norm_parts ? 2 : p.norm_gain ? 1 : 0;
  const size_t row_bytes = static_cast<size_t>(p.cols) * sizeof(T);
  const int64_t units = row_units(e, p);
  // s warps a unit: one token, rows of whole chunks, slices of at least four chunks a lane, or of one where a
  // whole row is not one whole batch (not TinyLlama's 2,048 columns or stories110M's 768)
  const size_t whole_batch = batch_chunks(row_bytes, false) * kLaneChunkBytes;
  const bool one_batch = row_bytes == whole_batch;
  auto can_split = [&](int s) {
    return NT == 1 && p.cols % kPer == 0 && row_bytes / s >= (one_batch ? 4 : 1) * kLaneChunkBytes;
  };
  CudaCorePlan plan{1, unrolled_for<T, NT>(row_bytes, false, e, norm)};
  const int whole_resident = resident_warps(plan.kernel);
  if (!forced && units > whole_resident && can_split(2)) {
    // Waves of whole rows through a kernel whose registers hold half the warps that halves of rows would
    // (eight chunks a lane): halves, twice the warps resident (TinyLlama's SwiGLU, 15.5 -> 14.8 us).
    const GemvKernelFn halves = unrolled_for<T, NT>(row_bytes / 2, true, e, norm);
    if (resident_warps(halves) >= 2 * whole_resident) return {2, halves};
  }
  if (!forced && 2 * units > whole_resident) return plan;  // whole rows keep half the warps busy
  double best = -1.0;
  for (int s : {1, 2, 4, 8}) {
    if ((s > 1 && !can_split(s)) || (forced && s != forced)) continue;
    const GemvKernelFn k = unrolled_for<T, NT>(row_bytes / s, s > 1, e, norm);
    const int resident = resident_warps(k);
    const int64_t warps = units * s, waves = (warps + resident - 1) / resident;
    const double fill = static_cast<double>(warps) / (static_cast<double>(waves) * resident) * (waves > 1 ? 0.9 : 1.0);
    if (fill > best + 1e-9) best = fill, plan = {s, k};
  }
  return plan;
}

template <typename T>
CudaCorePlan plan_typed(GemvEpilogue e, const GemvArgs& p, int forced) {
  switch (p.tokens) {
    case 1: return plan_tokens<T, 1>(e, p, forced);
    case 2: return plan_tokens<T, 2>(e, p, forced);
    case 3: return plan_tokens<T, 3>(e, p, forced);
    default: return plan_tokens<T, 4>(e, p, forced);
  }
}
static_assert(kGemvCudaCoreMaxTokens == 4, "plan_typed instantiates 1 to 4 tokens");

CudaCorePlan plan_cuda_core(GemvEpilogue e, const GemvArgs& p, DType type, const GemvTuning& tuning) {
  const int forced = tuning.splits ? tuning.splits : splits_from_env_once();
  switch (type) {
    case DType::F32: return plan_typed<float>(e, p, forced);
    case DType::F16: return plan_typed<__half>(e, p, forced);
    default: return plan_typed<__nv_bfloat16>(e, p, forced);
  }
}

// Auto here sees one product, not the model: it resolves as for a model too wide to count as narrow.
bool takes_tensor_cores(GemvKernel kernel, DType type, int tokens) {
  if (type == DType::F32) return false;
  return gemv_resolve(kernel, type, std::numeric_limits<int>::max(), tokens) == GemvKernel::TensorCore;
}

// Rows the staged SwiGLU takes: bf16/fp16, exactly one batch of kStageChunks chunks a lane.
bool stageable_rows(DType type, int cols) {
  return (type == DType::BF16 || type == DType::F16) && static_cast<size_t>(cols) * 2 == kStageChunks * kLaneChunkBytes;
}

// A one-token SwiGLU that stages rows (gemv_swiglu_staged_kernel): `blocks` staged blocks of `units` staged
// units each, `grid` blocks in all; grid 0 where the product takes the plain kernel.
struct StagedPlan {
  int blocks = 0, units = 0, grid = 0;
};

// Staged where the step keeps every SM in the largest shared-memory split (max_shared), the norm is prepared
// and the rows are one batch of kStageChunks chunks a lane of bf16/fp16, unless tuning.staged_units is 0.
// Every whole block is staged: TinyLlama's 5,632 rows are then 281 blocks of 20 units and one of 12, about
// one wave at two blocks a SM. H200, an experiment build, TinyLlama decode tok/s at batch 1 (units staged:
// blocks staged): 8:132 1,522-1,530, 8:264 1,536-1,546, 8:352 (all) 1,506-1,516, 12:264 1,549-1,551, 12:all
// 1,564-1,565, 14:256 (all) 1,551-1,555 (docs/PERFORMANCE.md).
StagedPlan plan_staged(GemvEpilogue e, const GemvArgs& p, DType type, const GemvTuning& tuning) {
  StagedPlan plan;
  const int units = tuning.staged_units < 0 ? kStagedUnits : tuning.staged_units;
  if (e != GemvEpilogue::Swiglu || p.tokens != 1 || !p.norm_parts || !p.max_shared || units == 0 ||
      !stageable_rows(type, p.cols))
    return plan;
  plan.units = units;
  plan.blocks = p.rows[0] / (kWarps + units);
  const int rest = p.rows[0] - plan.blocks * (kWarps + units);
  plan.grid = plan.blocks + (rest + kWarps - 1) / kWarps;
  return plan;
}

// True the first time it is asked for `kernel` and `attribute` on the current device: a kernel's attributes
// are set once a device.
bool first_on_device(const void* kernel, cudaFuncAttribute attribute) {
  static std::mutex mutex;
  static std::set<std::tuple<int, const void*, int>> seen;
  int device = 0;
  LLM_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  return seen.emplace(device, kernel, static_cast<int>(attribute)).second;
}

// A step that keeps the largest shared-memory split (GemvArgs::max_shared) asks it of each kernel it launches
// through the kernel's attribute, as the experiment measured it; it then holds for every launch of that kernel
// in the process. The kernels of other widths' products are other instances (rows of other batch counts), so
// models of other shapes are unaffected.
void prefer_max_shared(const void* kernel) {
  if (first_on_device(kernel, cudaFuncAttributePreferredSharedMemoryCarveout))
    LLM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
}

int gemv_swiglu_staged(const StagedPlan& plan, const GemvArgs& args, DType type, cudaStream_t stream) {
  const size_t shared = static_cast<size_t>(plan.units) * 2 * args.cols * 2;
  const auto kernel =
      type == DType::BF16 ? gemv_swiglu_staged_kernel<__nv_bfloat16> : gemv_swiglu_staged_kernel<__half>;
  constexpr size_t kMostShared = kMaxStagedUnits * 2 * kStageChunks * kLaneChunkBytes;  // (an upper bound only)
  if (first_on_device(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize))
    LLM_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kMostShared)));
  // (The staged kernel itself is left to the driver's choice of split, as measured.)
  launch_pdl(kernel, dim3(static_cast<unsigned>(plan.grid)), dim3(kWarps * 32), shared, stream, args, plan.blocks,
             plan.units);
  LLM_CUDA_CHECK_LAUNCH();
  return plan.grid;
}

}  // namespace

GemvKernel gemv_kernel_from_env() {
  const char* v = std::getenv("LLM_GEMV");
  if (!v || !*v || std::strcmp(v, "auto") == 0) return GemvKernel::Auto;
  if (std::strcmp(v, "cuda_core") == 0) return GemvKernel::CudaCore;
  if (std::strcmp(v, "tensor_core") == 0) return GemvKernel::TensorCore;
  fail("LLM_GEMV='{}': expected cuda_core, tensor_core or auto", v);
}

bool gemv_stage_from_env() {
  const char* v = std::getenv("LLM_GEMV_STAGE");
  if (!v || !*v || std::strcmp(v, "on") == 0) return true;
  if (std::strcmp(v, "off") == 0) return false;
  fail("LLM_GEMV_STAGE='{}': expected on or off", v);
}

bool gemv_stages_swiglu(GemvKernel kernel, DType type, int dim, bool allowed) {
  if (!allowed || !stageable_rows(type, dim) || takes_tensor_cores(kernel, type, 1) ||
      !gemv_prepares_norm(kernel, type, 1))
    return false;
  int device = 0, major = 0;  // (the copy engine's bulk copies: compute capability 9.0 on)
  LLM_CUDA_CHECK(cudaGetDevice(&device));
  LLM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major >= 9;
}

int gemv_splits_from_env() {
  const char* v = std::getenv("LLM_GEMV_SPLITS");
  if (!v || !*v || std::strcmp(v, "auto") == 0) return 0;
  for (const char* s : {"1", "2", "4", "8"})
    if (std::strcmp(v, s) == 0) return std::atoi(s);
  fail("LLM_GEMV_SPLITS='{}': expected 1, 2, 4, 8 or auto", v);
}

GemvKernel gemv_resolve(GemvKernel kernel, DType type, int dim, int tokens) {
  if (kernel != GemvKernel::Auto) return kernel;
  if (type == DType::F32) return GemvKernel::CudaCore;
  const int cuda_core_max = dim <= kGemvAutoNarrowDim ? kGemvCudaCoreMaxTokens : kGemvAutoCudaCoreMaxTokens;
  return tokens <= cuda_core_max ? GemvKernel::CudaCore : GemvKernel::TensorCore;
}

const char* gemv_kernel_name(GemvKernel kernel) {
  switch (kernel) {
    case GemvKernel::CudaCore: return "cuda_core";
    case GemvKernel::TensorCore: return "tensor_core";
    default: return "auto";
  }
}

bool gemv_normalizes_input(GemvKernel kernel, DType type, int tokens) {
  return tokens >= 1 && tokens <= gemv_max_tokens(kernel, type) && !takes_tensor_cores(kernel, type, tokens);
}

bool gemv_folds_argmax(GemvKernel kernel, DType type, int tokens) {
  return gemv_normalizes_input(kernel, type, tokens);
}

int gemv_next_parts_capacity(int rows, int tokens) { return std::max((rows + 1) / 2, (rows + 15) / 16 * tokens); }

bool gemv_prepares_norm(GemvKernel kernel, DType type, int tokens) {
  if (tokens < 1 || tokens > gemv_max_tokens(kernel, type)) return false;
  return tokens == 1 || takes_tensor_cores(kernel, type, tokens);
}

int gemv_max_tokens(GemvKernel kernel, DType type) {
  return type == DType::F32 || kernel == GemvKernel::CudaCore ? kGemvCudaCoreMaxTokens : kGemvMaxTokens;
}

int gemv(GemvEpilogue epilogue, const GemvArgs& args, DType type, cudaStream_t stream, GemvKernel kernel,
         const GemvTuning& tuning) {
  if (args.tokens < 1 || args.tokens > gemv_max_tokens(kernel, type))
    fail("gemv: {} tokens; the {} kernel takes 1 to {} for {}", args.tokens, gemv_kernel_name(kernel),
         gemv_max_tokens(kernel, type), dtype_name(type));
  if (args.norm_gain && !gemv_normalizes_input(kernel, type, args.tokens))
    fail("gemv: a fused RMSNorm needs the CUDA-core kernel ({} tokens, {} kernel, {})", args.tokens,
         gemv_kernel_name(kernel), dtype_name(type));
  if (args.norm_gain && epilogue == GemvEpilogue::AddF32) fail("gemv: no fused RMSNorm before a residual add");
  if ((args.norm_parts || args.next_x) && !gemv_prepares_norm(kernel, type, args.tokens))
    fail(
        "gemv: an RMSNorm prepared by the product before needs the tensor-core kernel or one token ({} tokens, {} "
        "kernel, {})",
        args.tokens, gemv_kernel_name(kernel), dtype_name(type));
  if (args.norm_parts && (args.norm_gain || epilogue == GemvEpilogue::AddF32 || args.norm_parts_count < 1))
    fail("gemv: norm_parts needs a product other than AddF32, no norm_gain, and at least one partial sum ({})",
         args.norm_parts_count);
  if (args.next_x && (epilogue != GemvEpilogue::AddF32 || !args.next_gain || !args.next_parts))
    fail("gemv: next_x is written by an AddF32 product, with next_gain and next_parts");
  if (epilogue == GemvEpilogue::ArgmaxF32 && (!args.argmax_keys || !gemv_folds_argmax(kernel, type, args.tokens)))
    fail(
        "gemv: the argmax folded into the product needs argmax_keys and the CUDA-core kernel ({} tokens, {} kernel, "
        "{})",
        args.tokens, gemv_kernel_name(kernel), dtype_name(type));
  if (takes_tensor_cores(kernel, type, args.tokens)) return gemv_tensor_core(epilogue, args, type, stream, tuning);
  if (tuning.splits && tuning.splits != 1 && tuning.splits != 2 && tuning.splits != 4 && tuning.splits != 8)
    fail("gemv: {} warps a row unit; the CUDA-core kernel takes 1, 2, 4 or 8", tuning.splits);
  if (tuning.staged_units < -1 || tuning.staged_units > kMaxStagedUnits)
    fail("gemv: {} staged units a block; the staged SwiGLU takes 0 to {}", tuning.staged_units, kMaxStagedUnits);
  if (const StagedPlan staged = plan_staged(epilogue, args, type, tuning); staged.grid)
    return gemv_swiglu_staged(staged, args, type, stream);
  const CudaCorePlan plan = plan_cuda_core(epilogue, args, type, tuning);
  const int64_t warps = row_units(epilogue, args) * plan.splits;
  const int blocks = static_cast<int>((warps + kWarps - 1) / kWarps);
  if (args.max_shared) prefer_max_shared(reinterpret_cast<const void*>(plan.kernel));
  launch_pdl(plan.kernel, dim3(static_cast<unsigned>(blocks)), dim3(kWarps * 32), stream, args, plan.splits);
  LLM_CUDA_CHECK_LAUNCH();
  return blocks;
}

GemvTuning gemv_plan(GemvEpilogue epilogue, const GemvArgs& args, DType type, GemvKernel kernel,
                     const GemvTuning& tuning) {
  if (!takes_tensor_cores(kernel, type, args.tokens)) {
    GemvTuning plan;
    plan.staged_units = plan_staged(epilogue, args, type, tuning).units;
    plan.splits = plan.staged_units ? 1 : plan_cuda_core(epilogue, args, type, tuning).splits;
    return plan;
  }
  return gemv_tensor_core_plan(epilogue, args, type, tuning);
}

}  // namespace llm::cuda
