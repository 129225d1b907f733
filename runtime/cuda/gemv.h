// Matrix-vector products for decode steps (1 to kGemvMaxTokens tokens), with the step that follows each
// product fused into its epilogue. A decode step reads every weight once and does a few multiply-adds per
// weight: it is a stream of bytes, and cuBLAS's general kernels (tiles padded from a few tokens to 64 or
// more, split-K reductions, separate element-wise kernels after them) leave much of the bandwidth unused.
// Two kernels stream the weights with 16-byte loads, several in flight, and finish on the spot:
//   QkvRope:  q, k, v = Wq x, Wk x, Wv x; RoPE on q and k (a warp holds both rows of a rotated pair);
//             q to its buffer, k and v straight into the KV cache row (slot, pos) of the token.
//   Swiglu:   h = silu(W1 x) * (W3 x) (a warp holds row r of both).
//   AddF32:   y += W x (the residual stream, fp32).
//   StoreF32: y = W x (logits, fp32).
//   ArgmaxF32: StoreF32, and each token's greedy pick folded into argmax keys (argmax_key.h) on the way,
//             so that no argmax kernel runs after the classifier (CUDA-core kernel only).
// The CUDA-core kernel can also take the RMSNorm before a product (gemv_normalizes_input): x is then the
// fp32 residual stream and the product is W (g * x / rms(x)). Every warp reads all of x anyway, so it sums
// the squares on the way and scales its totals at the end: one launch (and one wait on the kernel before)
// a norm fewer, which at batch 1 is a large share of a small product's time.
// The norm can instead be prepared by the product before it (norm_parts; the CUDA-core kernel at one token,
// the tensor-core kernel at any count): the AddF32 that writes the residual also writes g * y in the model
// dtype and, per token, one partial sum of squares of y per block, and the product after reads that as a
// plain x and scales each token's totals by 1 / rms from its partial sums. The fp32 x and the gain then no
// longer pass through every warp for every chunk: on the H200 the batch-1 q/k/v and SwiGLU products take
// 7-14% less of a decode step; for several tokens it replaces the RMSNorm launches between the products,
// two a layer (docs/PERFORMANCE.md).
// The CUDA-core kernel (gemv.cu: a warp per two rows, fp32 multiply-adds) works for every dtype but its
// unpacking and multiply-adds grow with the tokens while the bytes do not: from about 8 tokens on a 7B
// shape it is instruction-bound, so it stops at kGemvCudaCoreMaxTokens. The tensor-core kernel (gemv_tc.cu,
// bf16/fp16 only) does a 16-row tile per warp with mma.m16n8k16, tokens as the n dimension (one n-tile up
// to 8 tokens, two up to 16): the instruction count hardly grows with the tokens, and K is split over the
// warps of a block so that even a 4096-row matrix puts enough bytes in flight.
// Inputs x are rows in the model dtype; arithmetic is fp32. T is float, __half or __nv_bfloat16.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace llm::cuda {

constexpr int kGemvMaxTokens = 16;         // the most tokens any gemv kernel takes (bf16/fp16)
constexpr int kGemvCudaCoreMaxTokens = 4;  // the CUDA-core kernel's limit (the only one for fp32)
// GemvKernel::Auto takes the CUDA-core kernel up to this many tokens, the tensor-core one above; for a model
// at most kGemvAutoNarrowDim wide (gemv_resolve), up to kGemvCudaCoreMaxTokens. Measured end to end
// (docs/PERFORMANCE.md, H200, bf16 decode tok/s per sequence, CUDA cores / tensor cores): at 2 tokens
// Llama-2-7B 221 / 218, TinyLlama (2,048 wide) 969-978 / 900-904, stories110M (768 wide) 3,643-3,651 /
// 2,825-2,840; at 3 Llama-2-7B 196 / 212-213, TinyLlama 871-882 / 894-903, but stories110M 3,157-3,178 /
// 2,743-2,751, and at 4 2,788-2,793 / 2,659-2,667. Between them, MobileLLM's shapes with their ragged batches
// (gemv.cu): 960 columns at 3 1,101-1,107 / 1,010-1,018, at 4 1,003-1,004 / 992-998; but 1,152 at 3 776 /
// 836 and at 4 690 / 819, 1,280 at 3 540 / 562 and at 4 481 / 552. So the bound lies between 960 and 1,152.
constexpr int kGemvAutoCudaCoreMaxTokens = 2;
constexpr int kGemvAutoNarrowDim = 1024;

enum class GemvEpilogue { QkvRope, Swiglu, AddF32, StoreF32, ArgmaxF32 };

// Which kernel does a product. The environment variable LLM_GEMV (cuda_core, tensor_core or auto; read by
// gemv_kernel_from_env, which LlamaCuda calls once when it is built) chooses for a whole run, so that one
// build can be measured both ways. fp32 models always take the CUDA-core kernel (up to 4 tokens).
enum class GemvKernel {
  Auto,        // the faster one for the token count (and, in a model's step, its width: gemv_resolve)
  CudaCore,    // up to kGemvCudaCoreMaxTokens: longer steps go through cuBLAS, as before the tensor-core kernel
  TensorCore,  // bf16/fp16, 1 to kGemvMaxTokens
};

// LLM_GEMV as a GemvKernel (unset or empty: Auto); throws llm::Error naming the variable on another value.
GemvKernel gemv_kernel_from_env();
// The kernel a step of `tokens` tokens of a model `dim` wide (its residual stream's width) takes: `kernel`
// where it names one; for Auto the CUDA-core kernel (always for fp32) or the tensor-core one, by the token
// count and the width (kGemvAutoCudaCoreMaxTokens, kGemvAutoNarrowDim). gemv's own Auto, which sees one
// product and not the model, goes by the token count alone.
GemvKernel gemv_resolve(GemvKernel kernel, DType type, int dim, int tokens);
const char* gemv_kernel_name(GemvKernel kernel);
// LLM_GEMV_SPLITS as GemvTuning::splits for every product (unset, empty or auto: 0, chosen per product);
// throws llm::Error naming the variable on another value. gemv reads it once per process.
int gemv_splits_from_env();

// The most tokens `kernel` takes for a model of dtype `type`; longer steps belong to cuBLAS.
int gemv_max_tokens(GemvKernel kernel, DType type);

struct GemvArgs {
  // Up to three matrices, row-major [rows][cols] in the model dtype, laid end to end in "row space":
  // QkvRope: Wq, Wk, Wv; Swiglu: W1 and W3 (rows[0] each, computed side by side); others: w[0] alone.
  const void* w[3] = {nullptr, nullptr, nullptr};
  int rows[3] = {0, 0, 0};
  int cols = 0;
  const void* x = nullptr;  // [tokens][cols], model dtype; fp32 with norm_gain
  // The RMSNorm fused in front (CUDA-core kernel only): gain [cols]; x is then the fp32 residual.
  const float* norm_gain = nullptr;
  float norm_eps = 0.0f;
  // Or (gemv_prepares_norm) the RMSNorm prepared by the AddF32 before (next_x below): x is g * residual in
  // the model dtype, and norm_parts [tokens][norm_parts_count] each token's partial sums of squares of its
  // residual; the product scales each token's totals by rsqrt(sum / cols + norm_eps).
  const float* norm_parts = nullptr;
  int norm_parts_count = 0;
  int tokens = 0;
  // outputs
  void* out = nullptr;  // QkvRope: q [tokens][rows[0]]; Swiglu: h [tokens][rows[0]] (dtype); Add/StoreF32: fp32
  // QkvRope only (every section an even number of rows: RoPE pairs rows 2i, 2i+1)
  int head_dim = 0;
  const float* cos_sin = nullptr;  // [pos][head_dim / 2][2]
  const int32_t* pos = nullptr;    // [tokens]
  const int32_t* slot = nullptr;   // [tokens]
  void *k_cache = nullptr, *v_cache = nullptr;
  int64_t seq_stride = 0;  // elements between slots; rows of rows[1] elements per position
  // AddF32 only (gemv_prepares_norm): the input of the RMSNorm after it, for a product with norm_parts:
  // next_x = next_gain * y in the model dtype [tokens][rows], and into next_parts [tokens][blocks] each
  // token's partial sum of squares of y per block (blocks: what gemv returns; blocks * tokens at most
  // gemv_next_parts_capacity(rows, tokens)).
  const float* next_gain = nullptr;
  void* next_x = nullptr;
  float* next_parts = nullptr;
  // ArgmaxF32 only: [tokens][kArgmaxTokenWords] keys (argmax_key.h), zero before the product; every row's
  // logit is folded into its token's slots.
  uint64_t* argmax_keys = nullptr;
  // The launch asks for the largest shared-memory carveout: a step whose SwiGLU stages rows in shared memory
  // (gemv_stages_swiglu) sets it on every product, so that no SM has to drain to change its split between
  // L1 and shared memory before the staged blocks can join it.
  bool max_shared = false;
};

// How a kernel cuts a product (0: chosen from the shape and the device; for measurement and tests).
struct GemvTuning {
  // the tensor-core kernel
  int warps = 0;      // warps per block, each a slice of the columns (1, 2, 4, 8 or 16)
  int row_tiles = 0;  // 16-row tiles per block (1 or 2; Swiglu: 1, of W1 and of W3 each)
  // the CUDA-core kernel at one token: warps per pair of rows (Swiglu: per row of W1 and W3), each a slice
  // of the columns (1, 2, 4 or 8; where a slice would be under 2 KB, or more tokens, 1). LLM_GEMV_SPLITS
  // sets it for every product.
  int splits = 0;
  // the one-token SwiGLU that stages rows (gemv_stages_swiglu): the units whose rows each staged block
  // copies into shared memory (-1: the plan's; 0: none, the plain kernel)
  int staged_units = -1;
};

// The one-token SwiGLU with the norm prepared, for rows of 2,048 bf16/fp16 (one batch of 8 chunks a lane):
// while decode attention runs, the SwiGLU blocks already resident hold their rows in registers and wait,
// the DRAM goes idle, and shared memory sits empty. So each block also owns staged units, whose W1 and W3
// rows the copy engine brings into shared memory as soon as the block's own register loads have landed: the
// DRAM then has room. The step's products ask for the largest shared-memory split (GemvArgs::max_shared), or
// the staged blocks would wait for SMs to drain before joining them. It decoded TinyLlama at 1,569-1,572
// tok/s at batch 1 on the H200, against 1,497-1,499 without (81.3% and 77.4% of the floor;
// docs/PERFORMANCE.md). On by default; LLM_GEMV_STAGE=off keeps the plain kernel.
// gemv_stage_from_env reads the variable (unset, empty or on: true; off: false) and throws llm::Error naming
// it on another value.
bool gemv_stage_from_env();
// Whether a one-token step of a model `dim` wide stages its SwiGLU's rows (when `allowed`): its products
// then set GemvArgs::max_shared.
bool gemv_stages_swiglu(GemvKernel kernel, DType type, int dim, bool allowed = true);

// Whether gemv takes norm_gain (a fused RMSNorm) for a step of `tokens` tokens: the CUDA-core kernel does.
bool gemv_normalizes_input(GemvKernel kernel, DType type, int tokens);
// Whether gemv takes norm_parts and next_x (the RMSNorm prepared by the product before): the CUDA-core
// kernel at one token, the tensor-core kernel at any count.
bool gemv_prepares_norm(GemvKernel kernel, DType type, int tokens);

// Whether gemv takes ArgmaxF32 (the greedy pick folded into the product) for a step of `tokens` tokens:
// the CUDA-core kernel does.
bool gemv_folds_argmax(GemvKernel kernel, DType type, int tokens);

// The most partial sums an AddF32 with next_parts writes for `rows` rows and `tokens` tokens: a block per
// pair of rows at most at one token (CUDA-core), a block per 16 rows and token (tensor-core).
int gemv_next_parts_capacity(int rows, int tokens = 1);

// Enqueues the product on `stream`; tokens in [1, gemv_max_tokens(kernel, type)]. Returns the blocks
// launched (for an AddF32 with next_parts: the partial sums written).
int gemv(GemvEpilogue epilogue, const GemvArgs& args, DType type, cudaStream_t stream,
         GemvKernel kernel = GemvKernel::Auto, const GemvTuning& tuning = {});

// What gemv would use for this product on the current device: `tuning` with its zeros filled in, the
// tensor-core kernel's warps and row tiles, or the CUDA-core kernel's splits.
GemvTuning gemv_plan(GemvEpilogue epilogue, const GemvArgs& args, DType type, GemvKernel kernel = GemvKernel::Auto,
                     const GemvTuning& tuning = {});

}  // namespace llm::cuda
