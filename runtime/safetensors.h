// safetensors files (Hugging Face's weight format): an 8-byte little-endian header length, a JSON header
// mapping tensor names to {dtype, shape, data_offsets}, then the raw data. Parsing checks every offset
// against the file size and every size against dtype x shape; errors name the file and the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace llm::safetensors {

struct Tensor {
  std::string dtype;              // "F32", "F16", "BF16", ... as the file says
  std::vector<uint64_t> shape;    // row-major, outermost first
  const uint8_t* data = nullptr;  // into the mapped file
  uint64_t bytes = 0;
  uint64_t elements() const;
};

// Bytes per element of `dtype`, 0 when unknown.
int dtype_size(const std::string& dtype);

// The tensors of the safetensors file in data[0, size); `path` names it in messages.
std::map<std::string, Tensor> parse(const uint8_t* data, std::size_t size, const std::string& path);

}  // namespace llm::safetensors
