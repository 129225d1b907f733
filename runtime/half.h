// fp16 and bf16 bit patterns to and from fp32 on the host (round to nearest, ties to even), for files
// that store weights in them. fp16 goes through the compiler's _Float16 (IEEE binary16).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace llm {

inline float half_to_float(uint16_t bits) {
  _Float16 h;
  std::memcpy(&h, &bits, sizeof h);
  return static_cast<float>(h);
}

inline uint16_t float_to_half(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  uint16_t bits;
  std::memcpy(&bits, &h, sizeof bits);
  return bits;
}

inline float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

// How a file stores floating-point weights (GGUF and safetensors alike).
enum class StoredFloat { F32, F16, BF16 };

// dst[i] = stored value i of `src` (little-endian, no alignment needed) as fp32, for i < n.
inline void widen_to_f32(StoredFloat type, const uint8_t* src, std::size_t n, float* dst) {
  if (type == StoredFloat::F32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  for (std::size_t i = 0; i < n; ++i) {
    uint16_t b;
    std::memcpy(&b, src + 2 * i, 2);
    dst[i] = type == StoredFloat::F16 ? half_to_float(b) : bf16_to_float(b);
  }
}

}  // namespace llm
