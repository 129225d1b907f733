// Read-only views of the model's weights, pointing into the memory-mapped checkpoint (or into buffers
// the checkpoint owns when a tensor had to be converted at load). Shapes are (rows, cols), row-major,
// used as out = W x with x of length cols.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace llm {

enum class WeightType { F32, Q8_0 };

const char* weight_type_name(WeightType type);

// A matrix in fp32, or in Q8_0: int8 values with one fp32 scale per `group_size` consecutive values
// of the flattened matrix (value i = q[i] * scales[i / group_size]). Q8_0 matrices handed to the
// forward pass always have cols % group_size == 0, so every group lies inside one row.
struct Matrix {
  WeightType type = WeightType::F32;
  int rows = 0;
  int cols = 0;
  const float* f32 = nullptr;     // F32: rows * cols values
  const int8_t* q = nullptr;      // Q8_0: rows * cols values
  const float* scales = nullptr;  // Q8_0: rows * cols / group_size scales
  int group_size = 0;             // Q8_0 only

  // Bytes this matrix occupies (values plus scales): what reading it once costs.
  std::size_t bytes() const;
  // Writes row `r` as fp32 into out[0..cols).
  void dequantize_row(int r, float* out) const;
};

struct LayerWeights {
  const float* rms_att = nullptr;  // (dim) attention RMSNorm gain
  const float* rms_ffn = nullptr;  // (dim) feed-forward RMSNorm gain
  Matrix wq;                       // (n_heads * head_dim, dim)
  Matrix wk;                       // (kv_dim, dim)
  Matrix wv;                       // (kv_dim, dim)
  Matrix wo;                       // (dim, n_heads * head_dim)
  Matrix w1;                       // (hidden_dim, dim) gate
  Matrix w2;                       // (dim, hidden_dim) down
  Matrix w3;                       // (hidden_dim, dim) up
};

struct ModelWeights {
  Matrix token_embedding;  // (vocab_size, dim)
  std::vector<LayerWeights> layers;
  const float* rms_final = nullptr;  // (dim)
  Matrix classifier;                 // (vocab_size, dim); equals token_embedding when shared

  // Bytes one decode step reads: every matrix once (a shared classifier counted once), the norms,
  // and one embedding row.
  std::size_t bytes_per_token() const;
};

}  // namespace llm
