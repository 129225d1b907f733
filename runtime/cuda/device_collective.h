// The all-reduce of a tensor-parallel rank on the GPU (tensor_parallel.h): sums an fp32 device buffer over
// the ranks of the group, in place, enqueued on the rank's stream without synchronizing, so that it can
// be captured in the rank's CUDA graph with the rest of a decode step.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace llm::cuda {

class DeviceCollective {
 public:
  virtual ~DeviceCollective() = default;
  virtual void all_reduce_sum(float* data, size_t count, cudaStream_t stream) = 0;
};

}  // namespace llm::cuda
