// Matrix-vector products for decode steps (a few tokens), with the step that follows each product fused
// into its epilogue. At batch 1 a product reads every weight once and does one multiply-add per weight:
// it is a pure stream of bytes, and cuBLAS's general kernels (tensor-core tiles padded from 1 token to 8
// or 16) leave much of the bandwidth unused and need extra launches (split-K reductions, the element-wise
// steps after them). Here one warp streams two weight rows with 16-byte loads, several in flight, and
// keeps the products of up to kGemvMaxTokens tokens in registers; what follows is done on the spot:
//   QkvRope:  q, k, v = Wq x, Wk x, Wv x; RoPE on q and k (a warp holds both rows of a rotated pair);
//             q to its buffer, k and v straight into the KV cache row (slot, pos) of the token.
//   Swiglu:   h = silu(W1 x) * (W3 x) (a warp holds row r of both).
//   AddF32:   y += W x (the residual stream, fp32).
//   StoreF32: y = W x (logits, fp32).
// Inputs x are rows in the model dtype; arithmetic is fp32. T is float, __half or __nv_bfloat16.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace llm::cuda {

// More tokens per weight byte turn the product from memory-bound into instruction-bound on the CUDA
// cores (unpacking and multiply-adds grow with tokens, bytes do not): from about 8 tokens on a 7B shape
// the tensor cores (cuBLAS) are the better tool.
constexpr int kGemvMaxTokens = 4;

enum class GemvEpilogue { QkvRope, Swiglu, AddF32, StoreF32 };

struct GemvArgs {
  // Up to three matrices, row-major [rows][cols] in the model dtype, laid end to end in "row space":
  // QkvRope: Wq, Wk, Wv; Swiglu: W1 and W3 (rows[0] each, computed side by side); others: w[0] alone.
  const void* w[3] = {nullptr, nullptr, nullptr};
  int rows[3] = {0, 0, 0};
  int cols = 0;
  const void* x = nullptr;  // [tokens][cols], model dtype
  int tokens = 0;
  // outputs
  void* out = nullptr;  // QkvRope: q [tokens][rows[0]]; Swiglu: h [tokens][rows[0]] (dtype); Add/StoreF32: fp32
  // QkvRope only
  int head_dim = 0;
  const float* cos_sin = nullptr;  // [pos][head_dim / 2][2]
  const int32_t* pos = nullptr;    // [tokens]
  const int32_t* slot = nullptr;   // [tokens]
  void *k_cache = nullptr, *v_cache = nullptr;
  int64_t seq_stride = 0;  // elements between slots; rows of rows[1] elements per position
};

// Enqueues the product on `stream`; tokens in [1, kGemvMaxTokens].
void gemv(GemvEpilogue epilogue, const GemvArgs& args, DType type, cudaStream_t stream);

}  // namespace llm::cuda
