// The few PTX instructions the decode-step products are built on, shared by the CUDA-core kernels
// (gemv.cu) and the tensor-core ones (gemv_tc.cu). runtime/ keeps its own copy of the mma wrapper rather
// than including a plugin's header: plugins build against the SDK, not the other way round.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace llm::cuda {

// 16 bytes of weights, streamed: read once per step, so kept out of L1 (x, re-read by every warp, stays).
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// Data that the kernel before may still be writing (activations: x of a product, read after
// wait_for_previous_kernel()): ordinary, coherent loads, never ld.global.nc (__ldg). .nc promises that the
// data is read-only for the whole life of the kernel, so ptxas may schedule such a load above
// griddepcontrol.wait: it did, in gemv_tc_kernel<T, 2, 1, *> (a 16-byte x load moved above the wait, read
// while the RMSNorm before was still writing x). tools/pdl_check verifies the order in the SASS.
__device__ __forceinline__ uint4 load_activation16(const void* p) { return *static_cast<const uint4*>(p); }
__device__ __forceinline__ uint32_t load_activation2(const void* p) { return *static_cast<const unsigned short*>(p); }

// d += a b for one m16n8k16 tile, fp32 accumulation; T (__nv_bfloat16 or __half) is the type of a and b.
// Fragments, g = lane / 4, t = lane % 4, each register two elements of T (the lower k in the low half):
//   a[0] = A(g, 2t..2t+1), a[1] = A(g+8, 2t..2t+1), a[2] = A(g, 2t+8..2t+9), a[3] = A(g+8, 2t+8..2t+9);
//   b0 = B(2t..2t+1, g), b1 = B(2t+8..2t+9, g);
//   d[0], d[1] = D(g, 2t), D(g, 2t+1); d[2], d[3] = D(g+8, 2t), D(g+8, 2t+1).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                  uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

}  // namespace llm::cuda
