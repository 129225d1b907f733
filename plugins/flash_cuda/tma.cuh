// Hopper (sm_90) shared-memory barriers and the tensor memory accelerator (the copy engine).
//
// A barrier (mbarrier) counts arrivals and, for the copy engine, bytes: a phase completes when the
// expected arrivals have come and every byte announced with mbar_expect_bytes has landed. Waits name the
// phase parity they expect (0, 1, 0, ... per use). The copy engine brings a box of a tensor (described by
// a tensor map made on the host: kv_tensor_maps.h) into shared memory in one instruction, already in the
// 128-byte swizzle, and completes its bytes on a barrier.
// Files with portable kernels are compiled for sm_80 too; there these trap (the host never launches a
// Hopper path on such a GPU).
#pragma once

#include <cuda.h>

#include <cstdint>

namespace flash_cuda {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define FLASH_CUDA_SM90(...) __trap()
#else
#define FLASH_CUDA_SM90(...) __VA_ARGS__
#endif

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  FLASH_CUDA_SM90(asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory"));
}
// Makes the initialised barriers visible to the copy engine (a block-wide barrier then shows them to the
// other threads).
__device__ __forceinline__ void mbar_init_fence() {
  FLASH_CUDA_SM90(asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"));
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  FLASH_CUDA_SM90(asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar)
                               : "memory"));
}
// kCluster: for bytes stored by other blocks of the cluster (cluster_push), acquired at cluster scope.
template <bool kCluster = false>
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  FLASH_CUDA_SM90(uint32_t done; do {
    if constexpr (kCluster)
      asm volatile(
          "{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, "
          "0, p;\n}\n"
          : "=r"(done)
          : "r"(bar), "r"(parity)
          : "memory");
    else
      asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                   : "=r"(done)
                   : "r"(bar), "r"(parity)
                   : "memory");
  } while (!done));
}
// Arrives, announcing `bytes` more to land on the barrier in this phase.
__device__ __forceinline__ void mbar_expect_bytes(uint32_t bar, uint32_t bytes) {
  FLASH_CUDA_SM90(asm volatile(
      "{\n.reg .b64 state;\nmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n" ::"r"(bar), "r"(bytes)
      : "memory"));
}
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                            uint32_t bar) {
  FLASH_CUDA_SM90(asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
      "%5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory"));
}

// Byte offset of element (r, c) (16-bit elements) in a tile of `rows` rows as the copy engine lays it
// out: column panels of 64 elements (128 bytes a row) one after the other, each `rows` x 128 bytes, and
// within every 8 rows of a panel the 16-byte chunks permuted by the row (chunk ^ row % 8): the 128-byte
// swizzle. Tiles start on 1024 bytes (the swizzle's period).
__device__ __forceinline__ uint32_t tile_offset(int r, int c, int rows) {
  return static_cast<uint32_t>((c >> 6) * rows * 128 + r * 128 + ((((c & 63) >> 3) ^ (r & 7)) << 4));
}

#undef FLASH_CUDA_SM90  // (for this header's functions only)

}  // namespace flash_cuda
