// Calibration kernels for check.py: each differs from k_base in one instruction whose SASS encoding
// check.py learns (the PDL wait, the streamed weight load, global loads, stores and atomics).
#include <cstdint>

#include "mma.cuh"

__global__ void k_base(const uint4* a, uint4* out) { out[threadIdx.x] = a[threadIdx.x]; }
__global__ void k_wait(const uint4* a, uint4* out) {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  out[threadIdx.x] = a[threadIdx.x];
}
__global__ void k_stream(const uint4* a, uint4* out) { out[threadIdx.x] = llm::cuda::load_stream(a + threadIdx.x); }
__global__ void k_atomic(float* out) { atomicAdd(out + threadIdx.x, 1.0f); }
__global__ void k_shared(uint4* out) {  // shared-memory accesses, not counted
  __shared__ uint4 s[64];
  s[threadIdx.x] = make_uint4(threadIdx.x, 0, 0, 0);
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x ^ 1];
}
