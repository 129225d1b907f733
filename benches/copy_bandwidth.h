// The device's copy bandwidth, the ceiling the GPU benches print their floors against: the best of
// `rounds` device-to-device copies of `bytes`, counting each byte once read and once written.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "best_event_time.h"
#include "cuda_check.h"

inline double copy_bandwidth_gbs(size_t bytes, int rounds) {
  void *a = nullptr, *b = nullptr;
  LLM_CUDA_CHECK(cudaMalloc(&a, bytes));
  LLM_CUDA_CHECK(cudaMalloc(&b, bytes));
  LLM_CUDA_CHECK(cudaMemset(a, 1, bytes));
  const float best =
      best_event_ms(rounds, nullptr, [&] { LLM_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); });
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / (best * 1e-3) / 1e9;
}
