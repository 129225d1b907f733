#include "cuda_check.h"

#include "error.h"

namespace llm::cuda {

void throw_cuda_error(cudaError_t status, const char* expr, const char* file, int line) {
  fail("CUDA error {} ({}): {} at {}:{} in {}", cudaGetErrorName(status), static_cast<int>(status),
       cudaGetErrorString(status), file, line, expr);
}

void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line) {
  fail("cuBLAS error {} ({}) at {}:{} in {}", cublasGetStatusName(status), static_cast<int>(status), file, line, expr);
}

}  // namespace llm::cuda
