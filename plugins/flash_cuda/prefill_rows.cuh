// What both prefill kernels (sm_80 and sm_90a) agree on about rows: which keys a row may see, and where
// a row's query and output live. A row is a (query token, group head) pair of one (sequence, kv head),
// row = token * group + head in group (flash_params.h).
#pragma once

#include "flash_params.h"

namespace flash_cuda {

// Keys [0, limit) are visible to row r of a (sequence, kv head); 0 for rows past the last.
struct RowLimits {
  int64_t total_rows;
  int group, n_kv, q_len;
  bool causal;
  __device__ __forceinline__ int operator()(int64_t r) const {
    if (r < 0 || r >= total_rows) return 0;
    if (!causal) return n_kv;
    const int pos = n_kv - q_len + static_cast<int>(r / group);
    return max(0, min(n_kv, pos + 1));
  }
};

// Element offset of row r's query (or, with the out strides, its output) for the sequence starting at q0.
__device__ __forceinline__ int64_t row_offset(int64_t r, int q0, int group, int kv_head, int64_t token_stride,
                                              int64_t head_stride) {
  return (q0 + r / group) * token_stride + (kv_head * group + r % group) * head_stride;
}

}  // namespace flash_cuda
