// The forward pass's CPU building blocks, fp32 compute. Matrix products run on the runtime's thread pool and use
// AVX2/FMA when the CPU has it (chosen at run time: the build targets baseline x86-64). Every output element is summed
// in the same order whatever the thread count or the number of tokens, so prefill and decode give bitwise the same
// numbers.
#pragma once

#include <cstdint>
#include <vector>

#include "thread_pool.h"
#include "weights.h"

namespace llm::cpu {

// Activations quantized to Q8_0 for int8 products: `tokens` rows of `cols` values.
struct QuantizedActivations {
  std::vector<int8_t> q;      // tokens * cols
  std::vector<float> scales;  // tokens * cols / group_size
  int tokens = 0;
  int cols = 0;
  int group_size = 0;
};

// Quantizes x[tokens][cols] (max|x| / 127 per group, round to nearest) into `out`.
void quantize_rows(const float* x, int tokens, int cols, int group_size, QuantizedActivations& out);

// One product of a group: out[t][r] = sum_k W[r][k] x[t][k] for t < tokens, r < W.rows.
struct Product {
  const Matrix* w;
  float* out;
};
constexpr int kMaxGroup = 4;

// Runs up to kMaxGroup products that share one input in a single parallel pass (one hand-off to the
// threads instead of one per matrix: q/k/v, gate/up). x: the fp32 input [tokens][cols]; xq: the same
// input quantized, needed when any matrix is Q8_0 (same cols and group size).
void matmul_group(const Product* products, int count, const float* x, const QuantizedActivations* xq, int tokens,
                  ThreadPool& pool);

// A group of one: W fp32, x has W.cols values a row.
void matmul(const Matrix& w, const float* x, int tokens, float* out, ThreadPool& pool);

// The same for a Q8_0 matrix and pre-quantized activations (same group size and cols).
void matmul_q8(const Matrix& w, const QuantizedActivations& x, float* out, ThreadPool& pool);

// out = x / sqrt(mean(x^2) + eps) * gain, over n values.
void rmsnorm(float* out, const float* x, const float* gain, int n, float eps);

// Rotates adjacent pairs (2i, 2i+1) of each head by angle pos * theta^(-2i/head_dim) (llama2.c's RoPE
// layout), using a table of cos/sin [position][head_dim/2].
void rope(float* vec, int n_heads, int head_dim, const float* cos_sin_row);

// hidden = silu(gate) * up, in place into gate.
void swiglu(float* gate, const float* up, int n);

// Which instruction set the kernels use ("avx2+fma" or "scalar").
const char* isa_name();

}  // namespace llm::cpu
