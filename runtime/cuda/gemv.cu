// The CUDA-core kernel (see gemv.h), the choice between it and the tensor-core kernel (gemv_tc.cu), and
// LLM_GEMV.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "cuda_check.h"
#include "dtype_convert.cuh"
#include "error.h"
#include "gemv.h"
#include "mma.cuh"
#include "pdl.cuh"

namespace llm::cuda {

// gemv_tc.cu: the tensor-core kernel (bf16/fp16, 1 to kGemvMaxTokens tokens) and its plan.
void gemv_tensor_core(GemvEpilogue epilogue, const GemvArgs& args, DType type, cudaStream_t stream,
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

// acc[i][t] = row_i . x[t] for the warp's two rows (a, b), reduced over the warp: every lane ends with
// the totals. Lanes take 16-byte chunks round-robin, kUnroll of them per row loaded before any is used
// (see launch_tokens for how many).
template <typename T, int NT, int kUnroll, bool Norm>
__device__ __forceinline__ void warp_dot2(const T* a, const T* b, const Activations<T, Norm>& x, float eps,
                                          float (&acc)[2][NT]) {
  constexpr int kPer = 16 / sizeof(T);  // elements per chunk
  const int lane = threadIdx.x & 31, cols = x.cols;
  float ss[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[0][t] = acc[1][t] = ss[t] = 0.0f;
  // 16-byte chunks need rows that start on 16 bytes: otherwise (an odd shape) every element is a tail.
  const int chunks = cols % kPer == 0 ? cols / kPer : 0;
  int c = lane;
  uint4 wa[kUnroll], wb[kUnroll];
  auto load_batch = [&] {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      wa[u] = load_stream(a + static_cast<int64_t>(c + u * 32) * kPer);
      wb[u] = load_stream(b + static_cast<int64_t>(c + u * 32) * kPer);
    }
  };
  bool full = c + (kUnroll - 1) * 32 < chunks;
  if (full) load_batch();
  // The first weights are on their way; x (and the outputs) may still be in the previous kernel's hands.
  wait_for_previous_kernel();
  while (full) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int t = 0; t < NT; ++t) x.dot_chunk(wa[u], wb[u], t, c + u * 32, acc[0][t], acc[1][t], ss[t]);
    c += kUnroll * 32;
    full = c + (kUnroll - 1) * 32 < chunks;
    if (full) load_batch();
  }
  for (; c < chunks; c += 32) {
    const uint4 wa = load_stream(a + static_cast<int64_t>(c) * kPer);
    const uint4 wb = load_stream(b + static_cast<int64_t>(c) * kPer);
#pragma unroll
    for (int t = 0; t < NT; ++t) x.dot_chunk(wa, wb, t, c, acc[0][t], acc[1][t], ss[t]);
  }
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
    if constexpr (Norm) {
      const float inv = rsqrtf(ss[t] / cols + eps);
      acc[0][t] *= inv, acc[1][t] *= inv;
    }
  }
}

template <typename T, int NT, int U, GemvEpilogue E, bool Norm>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const GemvArgs p) {
  allow_next_kernel();
  const int warp = blockIdx.x * kWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  const int cols = p.cols;
  const Activations<T, Norm> x{p.x, p.norm_gain, cols};
  float acc[2][NT];
  if constexpr (E == GemvEpilogue::Swiglu) {
    const int r = warp;
    if (r >= p.rows[0]) return;
    const int64_t off = static_cast<int64_t>(r) * cols;
    warp_dot2<T, NT, U>(static_cast<const T*>(p.w[0]) + off, static_cast<const T*>(p.w[1]) + off, x, p.norm_eps, acc);
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
    if (m == 2 && r >= p.rows[2]) return;
    // (selected, not indexed: a run-time index into the parameter array would copy it to local memory)
    const void* wm = m == 0 ? p.w[0] : m == 1 ? p.w[1] : p.w[2];
    const T* w = static_cast<const T*>(wm) + static_cast<int64_t>(r) * cols;
    warp_dot2<T, NT, U>(w, w + cols, x, p.norm_eps, acc);
    if (lane < NT) {
#pragma unroll
      for (int t = 0; t < NT; ++t)
        if (t == lane) {
          float a = acc[0][t], b = acc[1][t];
          if (m < 2) {  // RoPE on the pair (llama2.c's adjacent layout)
            const float* cs = p.cos_sin + static_cast<int64_t>(p.pos[t]) * p.head_dim + (r % p.head_dim);
            const float c = cs[0], s = cs[1];
            const float ra = a * c - b * s, rb = a * s + b * c;
            a = ra, b = rb;
          }
          T* dst;
          if (m == 0) {
            dst = static_cast<T*>(p.out) + static_cast<int64_t>(t) * p.rows[0] + r;
          } else {
            const int64_t row =
                static_cast<int64_t>(p.slot[t]) * p.seq_stride + static_cast<int64_t>(p.pos[t]) * p.rows[1];
            dst = static_cast<T*>(m == 1 ? p.k_cache : p.v_cache) + row + r;
          }
          dst[0] = from_f32<T>(a);
          dst[1] = from_f32<T>(b);
        }
    }
  } else {
    const int rows = p.rows[0], r = 2 * warp;
    if (r >= rows) return;
    const bool second = r + 1 < rows;  // an odd last row: the warp computes it twice, writes it once
    const T* w = static_cast<const T*>(p.w[0]) + static_cast<int64_t>(r) * cols;
    warp_dot2<T, NT, U>(w, second ? w + cols : w, x, p.norm_eps, acc);
    if (lane < NT) {
#pragma unroll
      for (int t = 0; t < NT; ++t)
        if (t == lane) {
          float* y = static_cast<float*>(p.out) + static_cast<int64_t>(t) * rows + r;
          if constexpr (E == GemvEpilogue::AddF32) {
            y[0] += acc[0][t];
            if (second) y[1] += acc[1][t];
          } else {
            y[0] = acc[0][t];
            if (second) y[1] = acc[1][t];
          }
        }
    }
  }
}

template <typename T, int NT, int U>
void launch_unrolled(GemvEpilogue e, const GemvArgs& p, cudaStream_t stream) {
  int warps = 0;
  switch (e) {
    case GemvEpilogue::QkvRope: warps = (p.rows[0] + p.rows[1] + p.rows[2]) / 2; break;
    case GemvEpilogue::Swiglu: warps = p.rows[0]; break;
    default: warps = (p.rows[0] + 1) / 2; break;
  }
  const dim3 grid((warps + kWarps - 1) / kWarps), block(kWarps * 32);
  const bool norm = p.norm_gain != nullptr;
  auto launch = [&](auto epilogue) {
    constexpr GemvEpilogue kE = decltype(epilogue)::value;
    if constexpr (kE == GemvEpilogue::AddF32) {  // the residual add never follows a norm
      launch_pdl(gemv_kernel<T, NT, U, kE, false>, grid, block, stream, p);
    } else {
      if (norm)
        launch_pdl(gemv_kernel<T, NT, U, kE, true>, grid, block, stream, p);
      else
        launch_pdl(gemv_kernel<T, NT, U, kE, false>, grid, block, stream, p);
    }
  };
  switch (e) {
    case GemvEpilogue::QkvRope: launch(std::integral_constant<GemvEpilogue, GemvEpilogue::QkvRope>{}); break;
    case GemvEpilogue::Swiglu: launch(std::integral_constant<GemvEpilogue, GemvEpilogue::Swiglu>{}); break;
    case GemvEpilogue::AddF32: launch(std::integral_constant<GemvEpilogue, GemvEpilogue::AddF32>{}); break;
    case GemvEpilogue::StoreF32: launch(std::integral_constant<GemvEpilogue, GemvEpilogue::StoreF32>{}); break;
  }
}

// Four chunks a lane per batch. At one token, where a row is 4 KB (2048 columns of bf16) or 1.5 KB (768)
// the batch is the whole row, eight or three chunks, in flight before the wait on the kernel before; an
// 11 KB row (5632) is two whole batches of eleven instead of five of four and two single chunks. H200,
// decode at batch 1: TinyLlama 994 -> 1,050 (eight) -> 1,085-1,093 tok/s (eleven), stories110M 3,715-3,724
// -> 4,056-4,073 (three). Eight for 7B's 8 KB rows (253 -> 240), and a row's last partial batch loaded as
// one batch (TinyLlama 1,050 -> 1,012-1,017), measured slower: docs/PERFORMANCE.md.
template <typename T, int NT>
void launch_tokens(GemvEpilogue e, const GemvArgs& p, cudaStream_t stream) {
  if constexpr (NT == 1) {
    const size_t bytes = static_cast<size_t>(p.cols) * sizeof(T);
    if (bytes == 8 * 32 * 16) return launch_unrolled<T, NT, 8>(e, p, stream);
    if (bytes == 3 * 32 * 16) return launch_unrolled<T, NT, 3>(e, p, stream);
    if (bytes == 22 * 32 * 16) return launch_unrolled<T, NT, 11>(e, p, stream);
  }
  launch_unrolled<T, NT, 4>(e, p, stream);
}

template <typename T>
void launch_typed(GemvEpilogue e, const GemvArgs& p, cudaStream_t stream) {
  switch (p.tokens) {
    case 1: launch_tokens<T, 1>(e, p, stream); break;
    case 2: launch_tokens<T, 2>(e, p, stream); break;
    case 3: launch_tokens<T, 3>(e, p, stream); break;
    case 4: launch_tokens<T, 4>(e, p, stream); break;
    default: break;
  }
}
static_assert(kGemvCudaCoreMaxTokens == 4, "launch_typed instantiates 1 to 4 tokens");

bool takes_tensor_cores(GemvKernel kernel, DType type, int tokens) {
  if (type == DType::F32) return false;
  return kernel == GemvKernel::TensorCore || (kernel == GemvKernel::Auto && tokens > kGemvAutoCudaCoreMaxTokens);
}

}  // namespace

GemvKernel gemv_kernel_from_env() {
  const char* v = std::getenv("LLM_GEMV");
  if (!v || !*v || std::strcmp(v, "auto") == 0) return GemvKernel::Auto;
  if (std::strcmp(v, "cuda_core") == 0) return GemvKernel::CudaCore;
  if (std::strcmp(v, "tensor_core") == 0) return GemvKernel::TensorCore;
  fail("LLM_GEMV='{}': expected cuda_core, tensor_core or auto", v);
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

int gemv_max_tokens(GemvKernel kernel, DType type) {
  return type == DType::F32 || kernel == GemvKernel::CudaCore ? kGemvCudaCoreMaxTokens : kGemvMaxTokens;
}

void gemv(GemvEpilogue epilogue, const GemvArgs& args, DType type, cudaStream_t stream, GemvKernel kernel,
          const GemvTuning& tuning) {
  if (args.tokens < 1 || args.tokens > gemv_max_tokens(kernel, type))
    fail("gemv: {} tokens; the {} kernel takes 1 to {} for {}", args.tokens, gemv_kernel_name(kernel),
         gemv_max_tokens(kernel, type), dtype_name(type));
  if (args.norm_gain && !gemv_normalizes_input(kernel, type, args.tokens))
    fail("gemv: a fused RMSNorm needs the CUDA-core kernel ({} tokens, {} kernel, {})", args.tokens,
         gemv_kernel_name(kernel), dtype_name(type));
  if (args.norm_gain && epilogue == GemvEpilogue::AddF32) fail("gemv: no fused RMSNorm before a residual add");
  if (takes_tensor_cores(kernel, type, args.tokens)) return gemv_tensor_core(epilogue, args, type, stream, tuning);
  switch (type) {
    case DType::F32: launch_typed<float>(epilogue, args, stream); break;
    case DType::F16: launch_typed<__half>(epilogue, args, stream); break;
    case DType::BF16: launch_typed<__nv_bfloat16>(epilogue, args, stream); break;
  }
  LLM_CUDA_CHECK_LAUNCH();
}

GemvTuning gemv_plan(GemvEpilogue epilogue, const GemvArgs& args, DType type, GemvKernel kernel,
                     const GemvTuning& tuning) {
  if (!takes_tensor_cores(kernel, type, args.tokens)) return {};
  return gemv_tensor_core_plan(epilogue, args, type, tuning);
}

}  // namespace llm::cuda
