// Thread block clusters (compute capability 9.0): the blocks of a cluster run at once on one GPU
// processing cluster, pass a barrier together and read each other's shared memory. Decode merges its key
// splits this way (flash_decode.cu). Compiled for sm_80 too, where these trap (the host never launches a
// cluster there).
#pragma once

#include <cstdint>

namespace flash_cuda {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define FLASH_CUDA_CLUSTER(...) __trap()
#else
#define FLASH_CUDA_CLUSTER(...) __VA_ARGS__
#endif

// Every thread of every block of the cluster arrives; what each wrote before (shared or global memory) is
// visible to all after. (The barrier's aligned form wants whole warps: they are reconverged first.)
__device__ __forceinline__ void cluster_sync() {
  __syncwarp();
  FLASH_CUDA_CLUSTER(asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::
                                      : "memory"));
}

// The shared-memory address `addr` (of this block) as it lies in block `rank` of the cluster.
__device__ __forceinline__ uint32_t cluster_peer(uint32_t addr, uint32_t rank) {
  uint32_t peer = 0;
  FLASH_CUDA_CLUSTER(asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(peer) : "r"(addr), "r"(rank)));
  return peer;
}

__device__ __forceinline__ float cluster_load(uint32_t peer_addr) {
  float v = 0.0f;
  FLASH_CUDA_CLUSTER(asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(peer_addr)));
  return v;
}

#undef FLASH_CUDA_CLUSTER  // (for this header's functions only)

}  // namespace flash_cuda
