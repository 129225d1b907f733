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
// caller then copies with cp.async). `promotion`: how much the L2 fetches around each line a box reads.
// Decode takes none: with 256 bytes, ncu counted a quarter more L2 lookups than the lines the boxes
// delivered (hits on lines the promotion had already pulled in), with the L2 at 92% of its throughput,
// and decode read 3.99 / 4.20 TB/s at batch 32 (4K / 16K keys) against 4.33 / 4.56 with none (H200).
// Prefill rereads K and V from the L2 and measured level either way: it keeps 256 bytes.
bool encode_kv_maps(const Params& p, int keys, KvMaps* maps, CUtensorMapL2promotion promotion);

}  // namespace flash_cuda
