// The device's copy bandwidth, the ceiling the GPU benches print their floors against: the best of
// `rounds` device-to-device copies of `bytes`, counting each byte once read and once written.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

#include "cuda_check.h"

inline double copy_bandwidth_gbs(size_t bytes, int rounds) {
  void *a = nullptr, *b = nullptr;
  LLM_CUDA_CHECK(cudaMalloc(&a, bytes));
  LLM_CUDA_CHECK(cudaMalloc(&b, bytes));
  LLM_CUDA_CHECK(cudaMemset(a, 1, bytes));
  cudaEvent_t start, stop;
  LLM_CUDA_CHECK(cudaEventCreate(&start));
  LLM_CUDA_CHECK(cudaEventCreate(&stop));
  float best = 1e30f;
  for (int i = 0; i < rounds; ++i) {
    LLM_CUDA_CHECK(cudaEventRecord(start));
    LLM_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    LLM_CUDA_CHECK(cudaEventRecord(stop));
    LLM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    LLM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    best = std::min(best, ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / (best * 1e-3) / 1e9;
}
