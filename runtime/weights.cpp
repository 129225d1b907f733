#include "weights.h"

namespace llm {

const char* weight_type_name(WeightType type) {
  switch (type) {
    case WeightType::F32: return "f32";
    case WeightType::Q8_0: return "q8_0";
  }
  return "unknown";
}

std::size_t Matrix::bytes() const {
  const std::size_t n = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
  switch (type) {
    case WeightType::F32: return n * sizeof(float);
    case WeightType::Q8_0: return n * sizeof(int8_t) + (group_size > 0 ? n / group_size : 0) * sizeof(float);
  }
  return 0;
}

void Matrix::dequantize_row(int r, float* out) const {
  const std::size_t begin = static_cast<std::size_t>(r) * static_cast<std::size_t>(cols);
  if (type == WeightType::F32) {
    const float* src = f32 + begin;
    for (int c = 0; c < cols; ++c) out[c] = src[c];
    return;
  }
  // Q8_0: value i of the flattened matrix is q[i] * scales[i / group_size]; this holds whether or
  // not the row starts on a group boundary.
  const std::size_t gs = static_cast<std::size_t>(group_size);
  for (int c = 0; c < cols; ++c) {
    const std::size_t i = begin + static_cast<std::size_t>(c);
    out[c] = static_cast<float>(q[i]) * scales[i / gs];
  }
}

std::size_t ModelWeights::bytes_per_token() const {
  // One decode step reads one embedding row, every layer matrix, the norms and the whole
  // classifier. A shared classifier is the embedding table itself: it is counted once, as the
  // classifier (the embedding table is otherwise only read one row at a time).
  std::size_t total = 0;
  for (const LayerWeights& layer : layers) {
    for (const Matrix* m : {&layer.wq, &layer.wk, &layer.wv, &layer.wo, &layer.w1, &layer.w2, &layer.w3}) {
      total += m->bytes();
    }
  }
  total += classifier.bytes();
  const std::size_t dim = static_cast<std::size_t>(token_embedding.cols);
  total += (2 * layers.size() + 1) * dim * sizeof(float);  // rms_att, rms_ffn per layer, rms_final
  if (token_embedding.rows > 0) {
    Matrix row = token_embedding;
    row.rows = 1;
    total += row.bytes();
  }
  return total;
}

}  // namespace llm
