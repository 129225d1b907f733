#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>

#include "argmax_key.h"
#include "cuda_check.h"
#include "cuda_kernels.h"
#include "dtype_convert.cuh"
#include "pdl.cuh"

namespace llm::cuda {
namespace {

// Calls f.template operator()<T>() with T the C++ type of `type`.
template <typename F>
void by_type(DType type, F&& f) {
  switch (type) {
    case DType::F32: f(float{}); break;
    case DType::F16: f(__half{}); break;
    case DType::BF16: f(__nv_bfloat16{}); break;
  }
}

__device__ float block_sum(float v) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  v = threadIdx.x < warps ? partial[threadIdx.x] : 0.0f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __shared__ float total;
  if (threadIdx.x == 0) total = v;
  __syncthreads();
  return total;
}

// Four elements of T, loaded and stored as one access (8 bytes of bf16/fp16, 16 of fp32).
template <typename T>
struct alignas(4 * sizeof(T)) Four {
  T e[4];
};

template <typename T>
__global__ void embed_kernel(const int32_t* tokens, const T* table, int dim, int vocab, float* x, EmbedNextNorm next,
                             EmbedKeys keys) {
  const int t = blockIdx.x;
  if (keys.clear && threadIdx.x < kArgmaxSlots) keys.clear[argmax_slot_word(t, threadIdx.x)] = 0;
  int token;
  if (keys.picked) {  // the row of the token's largest key, by the first thread (its slots' loads in flight together)
    __shared__ int32_t picked;
    if (threadIdx.x == 0) picked = argmax_key_row(argmax_top_key(keys.picked + argmax_slot_word(t, 0)));
    __syncthreads();
    token = picked;
  } else {
    token = tokens[t];
  }
  float* out = x + static_cast<int64_t>(t) * dim;
  const bool valid = token >= 0 && token < vocab;
  const T* row = table + static_cast<int64_t>(valid ? token : 0) * dim;
  T* next_x = static_cast<T*>(next.x) + static_cast<int64_t>(t) * dim;
  const float nan = __int_as_float(0x7fc00000);
  float ss = 0.0f;
  if (dim % 4 == 0) {
    // Four elements a thread per access, a batch of accesses in flight at once: a row is one round trip
    // (element by element it was one a loop turn: 13.7 us for a 4096-wide row on the H200).
    constexpr int kBatch = 4;
    const int groups = dim / 4;
    for (int base = threadIdx.x; base < groups; base += kBatch * blockDim.x) {
      Four<T> r[kBatch];
      float4 g[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = base + u * blockDim.x;
        if (i < groups) {
          r[u] = reinterpret_cast<const Four<T>*>(row)[i];
          if (next.x) g[u] = reinterpret_cast<const float4*>(next.gain)[i];
        }
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = base + u * blockDim.x;
        if (i >= groups) break;
        float v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = valid ? to_f32(r[u].e[k]) : nan;
        reinterpret_cast<float4*>(out)[i] = make_float4(v[0], v[1], v[2], v[3]);
        if (next.x) {
          const float gk[4] = {g[u].x, g[u].y, g[u].z, g[u].w};
          Four<T> n;
#pragma unroll
          for (int k = 0; k < 4; ++k) n.e[k] = from_f32<T>(v[k] * gk[k]), ss = fmaf(v[k], v[k], ss);
          reinterpret_cast<Four<T>*>(next_x)[i] = n;
        }
      }
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      const float v = valid ? to_f32(row[i]) : nan;
      out[i] = v;
      if (next.x) next_x[i] = from_f32<T>(v * next.gain[i]), ss = fmaf(v, v, ss);
    }
  }
  if (next.x) {
    ss = block_sum(ss);
    if (threadIdx.x == 0) next.parts[t] = ss;
  }
}

template <typename T>
__global__ void rmsnorm_kernel(const float* x, const int32_t* rows, const float* gain, int dim, float eps, T* out) {
  allow_next_kernel();  // the product after it can start streaming its weights
  wait_for_previous_kernel();
  const int r = blockIdx.x;
  const float* xr = x + static_cast<int64_t>(rows ? rows[r] : r) * dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  const float inv = rsqrtf(block_sum(ss) / dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x)
    out[static_cast<int64_t>(r) * dim + i] = from_f32<T>(gain[i] * (xr[i] * inv));
}

template <typename T>
__global__ void rope_cache_kernel(T* q, T* k, const T* v, const int32_t* pos, const int32_t* slot, int n_heads,
                                  int n_kv, int head_dim, const float* cos_sin, T* k_cache, T* v_cache,
                                  int64_t seq_stride) {
  const int t = blockIdx.x;
  const int half = head_dim / 2, kv_dim = n_kv * head_dim;
  const float* cs = cos_sin + static_cast<int64_t>(pos[t]) * head_dim;
  T* qt = q + static_cast<int64_t>(t) * n_heads * head_dim;
  T* kt = k + static_cast<int64_t>(t) * kv_dim;
  for (int i = threadIdx.x; i < (n_heads + n_kv) * half; i += blockDim.x) {
    const int head = i / half, p = i % half;
    T* base = head < n_heads ? qt + head * head_dim : kt + (head - n_heads) * head_dim;
    const float a = to_f32(base[2 * p]), b = to_f32(base[2 * p + 1]);
    const float c = cs[2 * p], s = cs[2 * p + 1];
    base[2 * p] = from_f32<T>(a * c - b * s);
    base[2 * p + 1] = from_f32<T>(a * s + b * c);
  }
  __syncthreads();
  const int64_t row = static_cast<int64_t>(slot[t]) * seq_stride + static_cast<int64_t>(pos[t]) * kv_dim;
  const T* vt = v + static_cast<int64_t>(t) * kv_dim;
  for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
    k_cache[row + i] = kt[i];
    v_cache[row + i] = vt[i];
  }
}

template <typename T>
__global__ void swiglu_kernel(const float* gate, const float* up, int64_t n, T* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = from_f32<T>(g / (1.0f + __expf(-g)) * up[i]);
  }
}

// One block a row. The row is loaded in one round: every thread issues all its 16-byte loads before it
// compares any (a load, compare, load chain over 32000 logits was 31 L2 round trips, 9.4 us a step on
// the H200). Launched with PDL: resident while the classifier finishes, it waits before reading.
constexpr int kArgmaxThreads = 1024, kArgmaxBatch = 8;  // 8 x 4 x 1024 = 32768 logits in one round

__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(const float* logits, int vocab, int32_t* ids) {
  wait_for_previous_kernel();
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float best = -FLT_MAX;
  int best_i = 0x7fffffff;
  // Every thread sees its indices in ascending order, and keeps the first of equals (strictly greater).
  const bool aligned = vocab % 4 == 0 && reinterpret_cast<uintptr_t>(row) % 16 == 0;
  const int n4 = aligned ? vocab / 4 : 0;
  for (int base = threadIdx.x; base < n4; base += kArgmaxBatch * kArgmaxThreads) {
    float4 v[kArgmaxBatch];
#pragma unroll
    for (int u = 0; u < kArgmaxBatch; ++u) {
      const int j = base + u * kArgmaxThreads;
      v[u] = j < n4 ? reinterpret_cast<const float4*>(row)[j] : make_float4(-FLT_MAX, -FLT_MAX, -FLT_MAX, -FLT_MAX);
    }
#pragma unroll
    for (int u = 0; u < kArgmaxBatch; ++u) {
      const int i = 4 * (base + u * kArgmaxThreads);
      if (v[u].x > best) best = v[u].x, best_i = i;
      if (v[u].y > best) best = v[u].y, best_i = i + 1;
      if (v[u].z > best) best = v[u].z, best_i = i + 2;
      if (v[u].w > best) best = v[u].w, best_i = i + 3;
    }
  }
  for (int i = 4 * n4 + threadIdx.x; i < vocab; i += kArgmaxThreads)
    if (row[i] > best) best = row[i], best_i = i;
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ob > best || (ob == best && oi < best_i)) best = ob, best_i = oi;
  }
  __shared__ float sb[32];
  __shared__ int si[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) sb[warp] = best, si[warp] = best_i;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kArgmaxThreads / 32; ++w)
      if (sb[w] > best || (sb[w] == best && si[w] < best_i)) best = sb[w], best_i = si[w];
    ids[blockIdx.x] = best_i;
  }
}

template <typename T>
__global__ void convert_kernel(const float* src, int64_t n, T* dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_f32<T>(src[i]);
}

template <typename T>
__global__ void dequantize_q8_kernel(const int8_t* q, const float* scales, int group, int64_t n, T* dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_f32<T>(static_cast<float>(q[i]) * scales[i / group]);
}

int grid_for(int64_t n, int block) { return static_cast<int>(std::min<int64_t>((n + block - 1) / block, 65535)); }

}  // namespace

void embed(const int32_t* tokens, int n_tokens, const void* embedding, DType type, int dim, int vocab, float* x,
           cudaStream_t stream, const EmbedNextNorm& next, const EmbedKeys& keys) {
  by_type(type, [&](auto tag) {
    using T = decltype(tag);
    embed_kernel<T><<<n_tokens, 256, 0, stream>>>(tokens, static_cast<const T*>(embedding), dim, vocab, x, next, keys);
  });
  LLM_CUDA_CHECK_LAUNCH();
}

void rmsnorm(const float* x, const int32_t* rows, int n_rows, const float* gain, int dim, float eps, void* out,
             DType type, cudaStream_t stream) {
  by_type(type, [&](auto tag) {
    using T = decltype(tag);
    launch_pdl(rmsnorm_kernel<T>, dim3(n_rows), dim3(256), stream, x, rows, gain, dim, eps, static_cast<T*>(out));
  });
  LLM_CUDA_CHECK_LAUNCH();
}

void rope_and_cache(void* q, void* k, const void* v, const int32_t* pos, const int32_t* slot, int n_tokens, int n_heads,
                    int n_kv_heads, int head_dim, const float* cos_sin, void* k_cache, void* v_cache,
                    int64_t seq_stride, DType type, cudaStream_t stream) {
  by_type(type, [&](auto tag) {
    using T = decltype(tag);
    rope_cache_kernel<T><<<n_tokens, 128, 0, stream>>>(static_cast<T*>(q), static_cast<T*>(k), static_cast<const T*>(v),
                                                       pos, slot, n_heads, n_kv_heads, head_dim, cos_sin,
                                                       static_cast<T*>(k_cache), static_cast<T*>(v_cache), seq_stride);
  });
  LLM_CUDA_CHECK_LAUNCH();
}

void swiglu(const float* gate, const float* up, int64_t n, void* out, DType type, cudaStream_t stream) {
  by_type(type, [&](auto tag) {
    using T = decltype(tag);
    swiglu_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(gate, up, n, static_cast<T*>(out));
  });
  LLM_CUDA_CHECK_LAUNCH();
}

void argmax_rows(const float* logits, int n_rows, int vocab, int32_t* ids, cudaStream_t stream) {
  launch_pdl(argmax_kernel, dim3(n_rows), dim3(kArgmaxThreads), stream, logits, vocab, ids);
}

void convert_from_f32(const float* src, int64_t n, void* dst, DType type, cudaStream_t stream) {
  by_type(type, [&](auto tag) {
    using T = decltype(tag);
    convert_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(src, n, static_cast<T*>(dst));
  });
  LLM_CUDA_CHECK_LAUNCH();
}

void dequantize_q8(const int8_t* q, const float* scales, int group, int64_t n, void* dst, DType type,
                   cudaStream_t stream) {
  by_type(type, [&](auto tag) {
    using T = decltype(tag);
    dequantize_q8_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(q, scales, group, n, static_cast<T*>(dst));
  });
  LLM_CUDA_CHECK_LAUNCH();
}

}  // namespace llm::cuda
