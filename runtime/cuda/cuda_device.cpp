#include "cuda_device.h"

#include <cuda_runtime.h>

#include <string>

namespace llm::cuda {

DeviceStatus probe_device(int index) {
  DeviceStatus s;
  s.index = index;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    s.reason = std::string("no usable CUDA driver or device: ") + cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return s;
  }
  if (index >= count) {
    s.reason = "CUDA device " + std::to_string(index) + " requested but " + std::to_string(count) + " present";
    return s;
  }
  cudaDeviceProp prop{};
  if ((e = cudaGetDeviceProperties(&prop, index)) != cudaSuccess) {
    s.reason = std::string("cannot read CUDA device properties: ") + cudaGetErrorString(e);
    return s;
  }
  s.name = prop.name;
  s.compute_major = prop.major;
  s.compute_minor = prop.minor;
  s.multiprocessors = prop.multiProcessorCount;
  s.total_memory = prop.totalGlobalMem;
  if (prop.major < 8) {
    s.reason = "GPU " + s.name + " has compute capability " + std::to_string(prop.major) + "." +
               std::to_string(prop.minor) + "; this build needs 8.0 or newer";
    return s;
  }
  if ((e = cudaSetDevice(index)) != cudaSuccess ||
      (e = cudaMemGetInfo(&s.free_memory, &s.total_memory)) != cudaSuccess) {
    s.reason = std::string("cannot use CUDA device: ") + cudaGetErrorString(e);
    return s;
  }
  s.usable = true;
  return s;
}

llm_device_info device_info(const DeviceStatus& status) {
  llm_device_info d{};
  d.struct_size = sizeof(d);
  d.kind = LLM_DEVICE_CUDA;
  d.index = status.index;
  d.compute_major = status.compute_major;
  d.compute_minor = status.compute_minor;
  d.num_threads = 1;
  d.total_memory_bytes = status.total_memory;
  d.free_memory_bytes = status.free_memory;
  d.name = status.name.c_str();
  return d;
}

}  // namespace llm::cuda
