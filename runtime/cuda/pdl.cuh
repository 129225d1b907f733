// Programmatic dependent launch (Hopper): a kernel launched with launch_pdl may start while the kernel
// before it in the stream is still running, and must call wait_for_previous_kernel() before it reads
// anything that kernel (or any before it) wrote. Decode-step products use the overlap to start streaming
// their weights, which no kernel writes, while the previous step finishes: at batch 1 a product is a few
// microseconds of bytes, and the launch gap and ramp-up between kernels would otherwise be a large share.
// allow_next_kernel() lets the next such kernel be scheduled as soon as every block of this one has begun.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "cuda_check.h"

namespace llm::cuda {

__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_next_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...), allowed to overlap the kernel before it (see above).
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  LLM_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

// The same without dynamic shared memory.
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  launch_pdl(kernel, grid, block, size_t{0}, stream, std::forward<Args>(args)...);
}

}  // namespace llm::cuda
