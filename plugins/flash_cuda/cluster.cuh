// Thread block clusters (compute capability 9.0): the blocks of a cluster run at once on one GPU
// processing cluster, pass a barrier together and write into each other's shared memory. Decode merges its key
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

// A cluster barrier in two halves: a block arrives as soon as what it publishes is ready (relaxed: the
// arrival orders nothing itself; mbar_init_fence publishes barriers) and waits only where it needs its
// peers. (The aligned forms want whole warps: they are reconverged first.)
__device__ __forceinline__ void cluster_arrive_relaxed() {
  __syncwarp();
  FLASH_CUDA_CLUSTER(asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory"));
}
__device__ __forceinline__ void cluster_wait() {
  __syncwarp();
  FLASH_CUDA_CLUSTER(asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"));
}

// The shared-memory address `addr` (of this block) as it lies in block `rank` of the cluster.
__device__ __forceinline__ uint32_t cluster_peer(uint32_t addr, uint32_t rank) {
  uint32_t peer = 0;
  FLASH_CUDA_CLUSTER(asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(peer) : "r"(addr), "r"(rank)));
  return peer;
}

// Stores four (two) floats at `peer_addr` (16-byte, 8-byte aligned) in another block of the cluster and,
// once they have landed, completes their bytes on that block's barrier `peer_bar` (both from
// cluster_peer): a one-way push, no reply awaited.
__device__ __forceinline__ void cluster_push(uint32_t peer_addr, const float (&v)[4], uint32_t peer_bar) {
  FLASH_CUDA_CLUSTER(asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];\n" ::"r"(peer_addr),
      "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3]), "r"(peer_bar)
      : "memory"));
}
__device__ __forceinline__ void cluster_push(uint32_t peer_addr, float a, float b, uint32_t peer_bar) {
  FLASH_CUDA_CLUSTER(asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];\n" ::"r"(peer_addr), "f"(a),
      "f"(b), "r"(peer_bar)
      : "memory"));
}

#undef FLASH_CUDA_CLUSTER  // (for this header's functions only)

}  // namespace flash_cuda
