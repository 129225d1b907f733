// From a call's (dtype, head dim) to the kernel instantiation that serves it: with_kernel<Dims...> calls
// f(T{}, std::integral_constant<int, D>{}) for the element type T (__half or __nv_bfloat16) and the
// kernel dim D = kernel_dim(head_dim) among Dims, and returns what f returns; cudaErrorInvalidValue when
// no D among Dims serves the head dim.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>
#include <utility>

#include "flash_params.h"

namespace flash_cuda {

template <int... Dims, typename F>
cudaError_t with_kernel(bool fp16, int head_dim, F&& f) {
  const int d = kernel_dim(head_dim);
  cudaError_t e = cudaErrorInvalidValue;
  auto one = [&](auto dim) {
    if (d == decltype(dim)::value) e = fp16 ? f(__half{}, dim) : f(__nv_bfloat16{}, dim);
  };
  (one(std::integral_constant<int, Dims>{}), ...);
  return e;
}

// Every head dim the portable kernels are built for: kKernelDims.
template <typename F, size_t... I>
cudaError_t with_kernel_dims(bool fp16, int head_dim, F&& f, std::index_sequence<I...>) {
  return with_kernel<kKernelDims[I]...>(fp16, head_dim, static_cast<F&&>(f));
}
template <typename F>
cudaError_t with_any_kernel(bool fp16, int head_dim, F&& f) {
  return with_kernel_dims(fp16, head_dim, static_cast<F&&>(f),
                          std::make_index_sequence<sizeof(kKernelDims) / sizeof(kKernelDims[0])>{});
}

}  // namespace flash_cuda
