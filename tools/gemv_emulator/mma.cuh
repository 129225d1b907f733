// The emulator's load_stream and mma_16816 (see run.sh), found before runtime/cuda/mma.cuh.
#pragma once
#include "emu_core.h"
namespace llm::cuda {
inline uint4 load_stream(const void* p) { return emu::load16(p); }
inline uint4 load_activation16(const void* p) { return emu::load_activation<uint4>(p); }
inline uint32_t load_activation2(const void* p) { return emu::load_activation<unsigned short>(p); }
template <typename T>
inline void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  emu::mma<T>(d, a0, a1, a2, a3, b0, b1);
}
}  // namespace llm::cuda
