// Tensor maps of a contiguous KV cache (kv_tensor_maps.h).
#include "kv_tensor_maps.h"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>

namespace flash_cuda {

bool encode_kv_maps(const Params& p, int keys, KvMaps* maps, CUtensorMapL2promotion promotion) {
  if (p.kv.paged) return false;
  static const auto encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  // Positions: up to max_kv_len, and never past the slot's own region (whole boxes are read, also past a
  // sequence's length: this keeps those reads inside the cache).
  if (!encode || p.kv.token_stride <= 0 || p.kv.seq_stride < p.kv.token_stride) return false;
  const int64_t positions = std::min<int64_t>(p.max_kv_len, p.kv.seq_stride / p.kv.token_stride);
  if (positions < 1) return false;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(p.head_dim), static_cast<cuuint64_t>(p.num_kv_heads),
                              static_cast<cuuint64_t>(positions), 1u << 16};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(p.kv.head_stride) * 2,
                                 static_cast<cuuint64_t>(p.kv.token_stride) * 2,
                                 static_cast<cuuint64_t>(p.kv.seq_stride) * 2};
  const cuuint32_t box[4] = {64, 1, static_cast<cuuint32_t>(keys), 1};
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type = p.fp16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  for (int i = 0; i < 2; ++i) {
    CUtensorMap* map = i == 0 ? &maps->k : &maps->v;
    void* src = const_cast<void*>(i == 0 ? p.kv.k : p.kv.v);
    if (encode(map, type, 4, src, dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
               promotion, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
      return false;
  }
  return true;
}

}  // namespace flash_cuda
