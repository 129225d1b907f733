// CUDA and cuBLAS status checks that throw llm::Error naming the call, the file and the line.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace llm::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t status, const char* expr, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line);

}  // namespace llm::cuda

#define LLM_CUDA_CHECK(expr)                                                                                         \
  do {                                                                                                               \
    const cudaError_t llm_cuda_status_ = (expr);                                                                     \
    if (llm_cuda_status_ != cudaSuccess) ::llm::cuda::throw_cuda_error(llm_cuda_status_, #expr, __FILE__, __LINE__); \
  } while (0)

#define LLM_CUBLAS_CHECK(expr)                                                        \
  do {                                                                                \
    const cublasStatus_t llm_cublas_status_ = (expr);                                 \
    if (llm_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                  \
      ::llm::cuda::throw_cublas_error(llm_cublas_status_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: the launch's own error (bad configuration), without synchronizing.
#define LLM_CUDA_CHECK_LAUNCH() LLM_CUDA_CHECK(cudaGetLastError())
