// Writes GGUF (version 3) files: metadata, then tensors converted from fp32 to F32, F16, BF16 or Q8_0
// (llama.cpp's reference quantizer: per block of 32, d = max|x| / 127, q = round(x / d), d stored as fp16).
// For tools/convert_to_gguf and for tests that need GGUF files, well formed or deliberately not.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint.h"
#include "gguf.h"

namespace llm::gguf {

class Writer {
 public:
  void set(const std::string& key, Value value);
  void set_u32(const std::string& key, uint32_t v);
  void set_f32(const std::string& key, float v);
  void set_string(const std::string& key, std::string v);
  void set_strings(const std::string& key, const std::vector<std::string>& v);
  void set_f32s(const std::string& key, const std::vector<float>& v);
  void set_i32s(const std::string& key, const std::vector<int32_t>& v);
  void erase(const std::string& key);

  // dims[0] varies fastest (a matrix of `rows` x `cols` is {cols, rows}).
  void add_tensor(const std::string& name, std::vector<uint64_t> dims, TensorType type, const float* values);
  // Bytes as given, under any type id (for tests of what the reader refuses).
  void add_raw_tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, std::vector<uint8_t> bytes);

  void remove_tensor(const std::string& name);

  // Writes the file; throws llm::Error naming it on I/O failure.
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    std::vector<uint8_t> bytes;
  };
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<Tensor> tensors_;
};

// `values` (n, a multiple of 32 for Q8_0) encoded as `type`.
std::vector<uint8_t> encode(TensorType type, const float* values, std::size_t n);

// A llama-architecture GGUF of `checkpoint` (weights re-encoded as `type`, Q8_0 falling back to F16 for
// rows that are not whole blocks; norms stay F32) with the
// SentencePiece-style vocabulary `pieces` (spaces as ' ') and `scores`, as llama.cpp's converters lay it out.
Writer llama_gguf(const Checkpoint& checkpoint, const std::vector<std::string>& pieces,
                  const std::vector<float>& scores, TensorType type);

}  // namespace llm::gguf
