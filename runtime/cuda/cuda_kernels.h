// The GPU forward pass's fused element-wise kernels (launchers; the kernels live in cuda_kernels.cu).
// T is the model dtype (float, __half or __nv_bfloat16, passed as void* with a DType); the residual
// stream and all arithmetic are fp32.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace llm::cuda {

// The first RMSNorm's input, prepared for the product after the embedding (gemv.h, GemvArgs::norm_parts):
// x [tokens][dim] = gain * the embedded row in `type`, parts [tokens] its sums of squares. x null: none.
struct EmbedNextNorm {
  const float* gain = nullptr;
  void* x = nullptr;
  float* parts = nullptr;
};

// Argmax keys (argmax_key.h) the embedding reads and clears, [tokens][kArgmaxTokenWords] each: with `picked`, the
// tokens are the picks a classifier folded there (the step before), not an array of ids; `clear` is zeroed
// for the classifier of this step to fold into.
struct EmbedKeys {
  const uint64_t* picked = nullptr;
  uint64_t* clear = nullptr;
};

// x[t] = embedding[tokens[t]] as fp32; embedding is [vocab][dim] in `type`; and `next` where set.
// (A token outside [0, vocab) gives a row of NaN: ids picked on the device, from logits with no number in
// them, reach the next step that way and are reported once the ids are back on the host.)
void embed(const int32_t* tokens, int n_tokens, const void* embedding, DType type, int dim, int vocab, float* x,
           cudaStream_t stream, const EmbedNextNorm& next = {}, const EmbedKeys& keys = {});

// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * gain, written in `type`; rows[t] picks the row of x for output
// row t (nullptr: row t), so the classifier can norm only each sequence's last token.
void rmsnorm(const float* x, const int32_t* rows, int n_rows, const float* gain, int dim, float eps, void* out,
             DType type, cudaStream_t stream);

// Rotates q [tokens][n_heads][head_dim] and k [tokens][n_kv][head_dim] (both `type`, in place) by each token's
// position (llama2.c's adjacent-pair layout, angles from cos_sin [pos][head_dim/2][2]), then writes k and v
// into the cache: cache row (slot[t], pos[t]) of layer base k_cache / v_cache, rows of kv_dim elements,
// seq_stride elements between slots.
void rope_and_cache(void* q, void* k, const void* v, const int32_t* pos, const int32_t* slot, int n_tokens, int n_heads,
                    int n_kv_heads, int head_dim, const float* cos_sin, void* k_cache, void* v_cache,
                    int64_t seq_stride, DType type, cudaStream_t stream);

// out = silu(gate) * up, gate and up fp32 [n], out in `type`.
void swiglu(const float* gate, const float* up, int64_t n, void* out, DType type, cudaStream_t stream);

// ids[r] = argmax of logits[r][0..vocab) (lowest index among equals); an id outside [0, vocab) where no
// logit of the row is a number above -FLT_MAX (NaN or infinite throughout).
void argmax_rows(const float* logits, int n_rows, int vocab, int32_t* ids, cudaStream_t stream);

// dst = src converted from fp32 to `type` (weights upload).
void convert_from_f32(const float* src, int64_t n, void* dst, DType type, cudaStream_t stream);

// dst = q * scales[i / group] in `type` (Q8_0 weights dequantized on the device: a quarter of the bytes
// over PCIe and no host loop; the same fp32 product as Matrix::dequantize_row, so the same bits).
void dequantize_q8(const int8_t* q, const float* scales, int group, int64_t n, void* dst, DType type,
                   cudaStream_t stream);

}  // namespace llm::cuda
