// Element types of the GPU model's weights, activations and KV cache (compute is always fp32).
#pragma once

#include <llm/attention_backend.h>

#include <cstddef>
#include <string>

namespace llm {

enum class DType { F32, F16, BF16 };

inline std::size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
inline const char* dtype_name(DType t) { return t == DType::F32 ? "fp32" : t == DType::F16 ? "fp16" : "bf16"; }
inline llm_dtype sdk_dtype(DType t) {
  return t == DType::F32 ? LLM_DTYPE_F32 : t == DType::F16 ? LLM_DTYPE_F16 : LLM_DTYPE_BF16;
}
// Parses "fp32", "fp16" or "bf16"; returns false otherwise.
inline bool parse_dtype(const std::string& s, DType& out) {
  if (s == "fp32")
    out = DType::F32;
  else if (s == "fp16")
    out = DType::F16;
  else if (s == "bf16")
    out = DType::BF16;
  else
    return false;
  return true;
}

}  // namespace llm
