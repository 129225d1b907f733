// Tensor maps of a contiguous KV cache for the copy engine (tma.cuh): K and V as 4-d tensors (head dim,
// kv head, position, slot), boxes of 64 columns x `keys` positions of one kv head and slot, in the
// 128-byte swizzle. Host code.
#pragma once

#include <cuda.h>

#include "flash_params.h"

namespace flash_cuda {

struct KvMaps {
  CUtensorMap k, v;
};

// Fills `maps` for p's cache. Positions past p.max_kv_len, and columns past the head dim, read as zeros.
// False when the cache is paged (the maps cannot follow its blocks) or the driver cannot make them (the
// caller then copies with cp.async).
bool encode_kv_maps(const Params& p, int keys, KvMaps* maps);

}  // namespace flash_cuda
