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

// Rows row, row + step, row + 2 step, ... of one (sequence, kv head), as row_offset places them, with one
// division when the walk starts and none per row: a division per 16-byte chunk of Q was a tenth of the
// Hopper kernel's instructions at s = 512.
struct RowWalker {
  int64_t tok;  // the row's token, counted from the sequence's first (q0 included)
  int j;        // its head in the group
  int group, head0, tok_step, j_step;
  __device__ __forceinline__ RowWalker(int64_t row, int q0, int group_, int kv_head, int step)
      : tok(q0 + row / group_),
        j(static_cast<int>(row % group_)),
        group(group_),
        head0(kv_head * group_),
        tok_step(step / group_),
        j_step(step % group_) {}
  __device__ __forceinline__ int64_t offset(int64_t token_stride, int64_t head_stride) const {
    return tok * token_stride + (head0 + j) * head_stride;
  }
  __device__ __forceinline__ void next() {
    tok += tok_step, j += j_step;
    if (j >= group) j -= group, ++tok;
  }
};

// The rows one block of a prefill kernel owns: `bm` rows of sequence `seq`, counted from the end (tile 0
// holds the last rows, which see the most keys when causal: the low block ids, scheduled first, get the
// heavy tiles). count 0: the sequence has no rows there, nothing to do.
struct BlockRows {
  RowLimits limit_of;
  int q0, slot;
  int64_t row0;     // the block's first row
  int count;        // its rows
  int block_limit;  // keys its last row sees (the most of any of its rows)
};

__device__ __forceinline__ BlockRows block_rows(const Params& p, int seq, int64_t tile_from_end, int64_t tiles,
                                                int bm) {
  BlockRows b;
  b.q0 = p.q_start[seq];
  const int q_len = p.q_start[seq + 1] - b.q0, n_kv = p.kv_len[seq];
  b.limit_of = RowLimits{static_cast<int64_t>(max(q_len, 0)) * p.group, p.group, n_kv, q_len, p.causal != 0};
  b.row0 = (tiles - 1 - tile_from_end) * bm;
  b.count = b.row0 >= b.limit_of.total_rows
                ? 0
                : static_cast<int>(min(static_cast<int64_t>(bm), b.limit_of.total_rows - b.row0));
  b.block_limit = b.count > 0 ? b.limit_of(b.row0 + b.count - 1) : 0;
  b.slot = p.seq_slot[seq];
  return b;
}

}  // namespace flash_cuda
