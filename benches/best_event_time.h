// The best of `rounds` timings, in milliseconds, of what `enqueue` puts on `stream`, each between two CUDA
// events (the GPU benches print best-of figures: the least disturbed run is the closest to the hardware).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "cuda_check.h"

template <typename Enqueue>
float best_event_ms(int rounds, cudaStream_t stream, Enqueue&& enqueue) {
  cudaEvent_t start, stop;
  LLM_CUDA_CHECK(cudaEventCreate(&start));
  LLM_CUDA_CHECK(cudaEventCreate(&stop));
  float best = 1e30f;
  for (int r = 0; r < rounds; ++r) {
    LLM_CUDA_CHECK(cudaEventRecord(start, stream));
    enqueue();
    LLM_CUDA_CHECK(cudaEventRecord(stop, stream));
    LLM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    LLM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    best = std::min(best, ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return best;
}
