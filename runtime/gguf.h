// GGUF, the file format of llama.cpp (version 3): a header, typed metadata key-value pairs, tensor
// descriptions, then the aligned tensor data. This is the container alone; what a `llama` model means by
// its keys and tensors is in checkpoint_gguf.cpp. Parsing validates every length and offset against the
// file size before it is used, and each failure is an llm::Error naming the file and the offending part.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace llm::gguf {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian u32
constexpr uint32_t kVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;

enum class ValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12
};

// ggml tensor types this runtime reads (the others are named in errors, see tensor_type_name).
enum class TensorType : uint32_t { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 };
const char* tensor_type_name(uint32_t type);  // "Q4_K", ...; "unknown" past the list
constexpr int kQ8Block = 32;                  // Q8_0: blocks of an fp16 scale and 32 int8 values
constexpr std::size_t kQ8BlockBytes = 2 + kQ8Block;

struct Value {
  ValueType type = ValueType::U8;
  uint64_t u = 0;  // unsigned integers and bool
  int64_t i = 0;   // signed integers
  double f = 0;    // floats
  std::string s;
  ValueType elem = ValueType::U8;  // Array: element type
  std::vector<Value> array;
  bool is_integer() const;
  int64_t integer() const;  // the value of an integer type (unsigned ones through u)
  bool is_float() const { return type == ValueType::F32 || type == ValueType::F64; }
};
const char* value_type_name(ValueType type);

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // dims[0] varies fastest (a row of a matrix has dims[0] elements)
  uint32_t type = 0;
  uint64_t offset = 0;  // from the start of the file (already past the data section's start)
  uint64_t bytes = 0;
  uint64_t elements() const;
};

struct File {
  uint32_t version = 0;
  uint64_t alignment = kDefaultAlignment;
  std::map<std::string, Value> metadata;
  std::vector<TensorInfo> tensors;

  const TensorInfo* tensor(const std::string& name) const;
  const Value* find(const std::string& key) const;
};

// Parses the GGUF container in data[0, size). `path` names the file in messages.
File parse(const uint8_t* data, std::size_t size, const std::string& path);

// Bytes a tensor of `type` and `elements` values occupies; 0 for a type this runtime cannot size.
uint64_t tensor_bytes(uint32_t type, uint64_t elements);

}  // namespace llm::gguf
