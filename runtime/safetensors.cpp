#include "safetensors.h"

#include <fmt/ranges.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "error.h"

namespace llm::safetensors {

uint64_t Tensor::elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

int dtype_size(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
  return 0;
}

std::map<std::string, Tensor> parse(const uint8_t* data, std::size_t size, const std::string& path) {
  if (size < 8) fail("{}: safetensors: file is {} bytes, too short for the 8-byte header length", path, size);
  uint64_t header_len;
  std::memcpy(&header_len, data, 8);
  if (header_len > size - 8)
    fail("{}: safetensors: header of {} bytes runs past the end of the {}-byte file (truncated or not safetensors)",
         path, header_len, size);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(data + 8, data + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: safetensors: the header is not valid JSON: {}", path, e.what());
  }
  if (!header.is_object()) fail("{}: safetensors: the header is not a JSON object", path);
  const uint8_t* base = data + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  std::map<std::string, Tensor> out;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    try {
      Tensor t;
      t.dtype = info.at("dtype").get<std::string>();
      t.shape = info.at("shape").get<std::vector<uint64_t>>();
      const auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[0] > offsets[1])
        fail("{}: safetensors: tensor '{}' has data_offsets that are not [begin, end]", path, name);
      if (offsets[1] > data_size)
        fail("{}: safetensors: tensor '{}' ends at data offset {}, past the {} bytes of data (truncated?)", path, name,
             offsets[1], data_size);
      t.data = base + offsets[0];
      t.bytes = offsets[1] - offsets[0];
      const int es = dtype_size(t.dtype);
      if (es != 0 && t.bytes != t.elements() * static_cast<uint64_t>(es))
        fail("{}: safetensors: tensor '{}' holds {} bytes, but {} of shape [{}] needs {}", path, name, t.bytes, t.dtype,
             fmt::join(t.shape, ", "), t.elements() * static_cast<uint64_t>(es));
      out.emplace(name, std::move(t));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: safetensors: tensor '{}' has a malformed entry: {}", path, name, e.what());
    }
  }
  return out;
}

}  // namespace llm::safetensors
