// Attention kernels of mha_cuda.so: fp32 accumulation and softmax over fp32, fp16 or bf16 data.
//
// Work split. For one (sequence, kv head) the "rows" are the (query token j, group head g) pairs, row =
// j * group + g, query head = kv_head * group + g: consecutive rows share a token, so a tile of rows has
// nearly the same causal limit, and a decode tile is the GQA group reading K/V once. A block of kWarps
// warps serves kRows rows (a tile) and a range of keys (all of them, or one split of them):
//   - each warp takes every kWarps-th group of kKeys consecutive keys of the range;
//   - lane l holds components d = l, l + 32, ... of each row's query (pre-scaled by softmax_scale*log2 e)
//     and of each key and value it reads, so every load instruction of a warp reads 32 consecutive
//     elements (coalesced, no alignment assumptions, any head_dim);
//   - a q.k dot product is a lane partial sum then a xor-butterfly over the warp, which leaves the
//     bitwise same score in every lane, so the online softmax state (running max m and sum l, base 2)
//     is uniform across the warp and acc[row][component] stays spread over the lanes;
//   - at the end the warps' (m, l, acc) are merged through shared memory in warp order.
// With one split the block writes the normalised output; with several, each split writes (m, l, acc)
// unnormalised to the workspace and combine_kernel merges the splits in split order. Every order is
// fixed, so results are bitwise reproducible for the same inputs and launch plan.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "attention_kernels.h"

namespace mha_cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kKeys = 4;               // keys a warp scores per step (loads in flight per lane: 2*kKeys*EPL)
constexpr int kMinKeysPerSplit = 256;  // a split gets at least this many keys
constexpr int kMaxSplits = 64;
constexpr float kLog2e = 1.4426950408889634f;

// Per head-dim bucket: components per lane and rows per block (registers: ~2 * kRows * kEpl for q and
// acc, 2 * kKeys * kEpl for k and v, kRows * kKeys scores).
template <int DMAX>
struct Bucket {
  static constexpr int kEpl = DMAX / 32;
  static constexpr int kRows = DMAX <= 64 ? 8 : DMAX <= 128 ? 4 : 2;
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// llm_kv_offset for device code (the SDK's is host C).
__device__ __forceinline__ int64_t kv_offset(const KvParams& kv, int slot, int pos, int kv_head) {
  if (kv.paged) {
    const int32_t block = kv.block_table[static_cast<int64_t>(slot) * kv.max_blocks_per_seq + pos / kv.block_size];
    return static_cast<int64_t>(block) * kv.block_stride + static_cast<int64_t>(pos % kv.block_size) * kv.token_stride +
           static_cast<int64_t>(kv_head) * kv.head_stride;
  }
  return static_cast<int64_t>(slot) * kv.seq_stride + static_cast<int64_t>(pos) * kv.token_stride +
         static_cast<int64_t>(kv_head) * kv.head_stride;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Where a block is: its (sequence, kv head, row tile). `id` counts blocks without splits; heavy tiles
// (the last queries of a causal prefill see the most keys) get the low ids, so they are scheduled first.
struct BlockPos {
  int seq, kv_head, tile;
};

__device__ __forceinline__ BlockPos block_pos(int64_t id, int64_t tiles, int num_kv_heads) {
  BlockPos b;
  b.tile = static_cast<int>(tiles - 1 - id % tiles);
  const int64_t rest = id / tiles;
  b.kv_head = static_cast<int>(rest % num_kv_heads);
  b.seq = static_cast<int>(rest / num_kv_heads);
  return b;
}

// The rows of a tile; row r of the tile is row (row0 + r) of its (sequence, kv head).
struct Tile {
  int q0, q_len, n_kv, group, kv_head;
  int64_t row0;
  int count;      // real rows in the tile (0: the sequence has no rows here)
  int max_limit;  // the most keys any of its rows sees
};

__device__ __forceinline__ int tile_token(const Tile& t, int r) {
  return t.q0 + static_cast<int>((t.row0 + r) / t.group);
}
__device__ __forceinline__ int tile_q_head(const Tile& t, int r) {
  return t.kv_head * t.group + static_cast<int>((t.row0 + r) % t.group);
}
// Keys [0, limit) are visible to row r (0 for rows past the tile's count). Non-decreasing in r.
__device__ __forceinline__ int tile_limit(const Tile& t, bool causal, int r) {
  if (r >= t.count) return 0;
  const int pos = t.n_kv - t.q_len + static_cast<int>((t.row0 + r) / t.group);  // the query's position
  return max(0, min(t.n_kv, causal ? pos + 1 : t.n_kv));
}

__device__ __forceinline__ Tile tile_info(const LaunchParams& p, const BlockPos& b, int rows) {
  Tile t;
  t.q0 = p.q_start[b.seq];
  t.q_len = p.q_start[b.seq + 1] - t.q0;
  t.n_kv = p.kv_len[b.seq];
  t.group = p.num_q_heads / p.num_kv_heads;
  t.kv_head = b.kv_head;
  t.row0 = static_cast<int64_t>(b.tile) * rows;
  const int64_t total_rows = static_cast<int64_t>(max(t.q_len, 0)) * t.group;
  t.count = total_rows > t.row0 ? static_cast<int>(min(static_cast<int64_t>(rows), total_rows - t.row0)) : 0;
  t.max_limit = t.count > 0 ? tile_limit(t, p.causal != 0, t.count - 1) : 0;
  return t;
}

template <typename T, int DMAX>
__global__ void __launch_bounds__(kThreads) attention_kernel(const LaunchParams p, const int64_t tiles) {
  constexpr int EPL = Bucket<DMAX>::kEpl, ROWS = Bucket<DMAX>::kRows;
  __shared__ float sm_m[kWarps][ROWS], sm_l[kWarps][ROWS];
  __shared__ float sm_acc[kWarps][ROWS][DMAX];

  const int splits = p.num_splits;
  const int split = static_cast<int>(blockIdx.x % splits);
  const BlockPos b = block_pos(static_cast<int64_t>(blockIdx.x / splits), tiles, p.num_kv_heads);
  const Tile t = tile_info(p, b, ROWS);
  if (t.count == 0) return;  // uniform over the block: this sequence has fewer rows than the tile grid
  const int nrows = t.count, D = p.head_dim;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int slot = p.seq_slot[b.seq];

  // This split's keys.
  int k_begin = 0, k_end = t.max_limit;
  if (splits > 1) {
    const int chunk = max((t.max_limit + splits - 1) / splits, kMinKeysPerSplit);
    const int64_t begin = static_cast<int64_t>(split) * chunk;
    k_begin = static_cast<int>(min(begin, static_cast<int64_t>(t.max_limit)));
    k_end = static_cast<int>(min(begin + chunk, static_cast<int64_t>(t.max_limit)));
  }

  const T* __restrict__ q = static_cast<const T*>(p.q);
  const T* __restrict__ K = static_cast<const T*>(p.kv.k);
  const T* __restrict__ V = static_cast<const T*>(p.kv.v);
  const float qscale = p.softmax_scale * kLog2e;

  float qv[ROWS][EPL], acc[ROWS][EPL], m[ROWS], l[ROWS];
  int limit[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
    limit[r] = tile_limit(t, p.causal != 0, r);
    const T* qrow = q + tile_token(t, r) * p.q_token_stride + tile_q_head(t, r) * p.q_head_stride;
#pragma unroll
    for (int c = 0; c < EPL; ++c) {
      const int d = lane + 32 * c;
      qv[r][c] = (r < nrows && d < D) ? to_float(qrow[d]) * qscale : 0.0f;
      acc[r][c] = 0.0f;
    }
  }

  for (int base = k_begin + warp * kKeys; base < k_end; base += kWarps * kKeys) {
    float kf[kKeys][EPL], vf[kKeys][EPL];
#pragma unroll
    for (int kk = 0; kk < kKeys; ++kk) {
      const bool in = base + kk < k_end;
      const int64_t off = in ? kv_offset(p.kv, slot, base + kk, b.kv_head) : 0;
#pragma unroll
      for (int c = 0; c < EPL; ++c) {
        const int d = lane + 32 * c;
        const bool ok = in && d < D;
        kf[kk][c] = ok ? to_float(K[off + d]) : 0.0f;
        vf[kk][c] = ok ? to_float(V[off + d]) : 0.0f;
      }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (r >= nrows) break;  // uniform
      float s[kKeys];
#pragma unroll
      for (int kk = 0; kk < kKeys; ++kk) {
        float dot = 0.0f;
#pragma unroll
        for (int c = 0; c < EPL; ++c) dot = fmaf(qv[r][c], kf[kk][c], dot);
        s[kk] = dot;
      }
#pragma unroll
      for (int kk = 0; kk < kKeys; ++kk) s[kk] = warp_sum(s[kk]);
      float chunk_max = -INFINITY;
#pragma unroll
      for (int kk = 0; kk < kKeys; ++kk) {
        if (base + kk >= k_end || base + kk >= limit[r]) s[kk] = -INFINITY;  // past the range or masked
        chunk_max = fmaxf(chunk_max, s[kk]);
      }
      if (chunk_max == -INFINITY) continue;  // nothing visible to this row here (uniform over the warp)
      const float m_new = fmaxf(m[r], chunk_max);
      const float alpha = exp2f(m[r] - m_new);  // 0 when m was -inf
      l[r] *= alpha;
#pragma unroll
      for (int c = 0; c < EPL; ++c) acc[r][c] *= alpha;
#pragma unroll
      for (int kk = 0; kk < kKeys; ++kk) {
        const float pk = exp2f(s[kk] - m_new);  // 0 for masked keys
        l[r] += pk;
#pragma unroll
        for (int c = 0; c < EPL; ++c) acc[r][c] = fmaf(pk, vf[kk][c], acc[r][c]);
      }
      m[r] = m_new;
    }
  }

  // Merge the warps in warp order.
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
#pragma unroll
    for (int c = 0; c < EPL; ++c) sm_acc[warp][r][lane + 32 * c] = acc[r][c];
    if (lane == 0) {
      sm_m[warp][r] = m[r];
      sm_l[warp][r] = l[r];
    }
  }
  __syncthreads();

  T* __restrict__ out = static_cast<T*>(p.out);
  const int64_t ws_rows = static_cast<int64_t>(gridDim.x) * ROWS;  // partial rows in the workspace
  for (int e = threadIdx.x; e < nrows * D; e += kThreads) {
    const int r = e / D, d = e - r * D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w][r]);
    float L = 0.0f, O = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float wt = sm_m[w][r] == -INFINITY ? 0.0f : exp2f(sm_m[w][r] - M);
        L = fmaf(sm_l[w][r], wt, L);
        O = fmaf(sm_acc[w][r][d], wt, O);
      }
    }
    if (splits == 1) {
      out[tile_token(t, r) * p.out_token_stride + tile_q_head(t, r) * p.out_head_stride + d] =
          from_float<T>(L > 0.0f ? O / L : 0.0f);
    } else {
      const int64_t prow = static_cast<int64_t>(blockIdx.x) * ROWS + r;  // (block id * splits + split) * ROWS + r
      if (d == 0) {
        p.workspace[2 * prow] = M;
        p.workspace[2 * prow + 1] = L;
      }
      p.workspace[2 * ws_rows + prow * D + d] = O;
    }
  }
}

// Merges the splits of each row in split order and writes the normalised output.
template <typename T, int DMAX>
__global__ void __launch_bounds__(kThreads) combine_kernel(const LaunchParams p, const int64_t tiles) {
  constexpr int ROWS = Bucket<DMAX>::kRows;
  const int splits = p.num_splits;
  const BlockPos b = block_pos(blockIdx.x, tiles, p.num_kv_heads);
  const Tile t = tile_info(p, b, ROWS);
  const int nrows = t.count, D = p.head_dim;
  const int64_t ws_rows = static_cast<int64_t>(gridDim.x) * splits * ROWS;
  const float* ml = p.workspace;
  const float* o = p.workspace + 2 * ws_rows;
  T* __restrict__ out = static_cast<T*>(p.out);
  for (int e = threadIdx.x; e < nrows * D; e += kThreads) {
    const int r = e / D, d = e - r * D;
    const int64_t first = static_cast<int64_t>(blockIdx.x) * splits * ROWS + r;  // split s: first + s * ROWS
    float M = -INFINITY;
    for (int s = 0; s < splits; ++s) M = fmaxf(M, ml[2 * (first + s * ROWS)]);
    float L = 0.0f, O = 0.0f;
    if (M != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const int64_t prow = first + s * ROWS;
        const float ms = ml[2 * prow];
        const float wt = ms == -INFINITY ? 0.0f : exp2f(ms - M);
        L = fmaf(ml[2 * prow + 1], wt, L);
        O = fmaf(o[prow * D + d], wt, O);
      }
    }
    out[tile_token(t, r) * p.out_token_stride + tile_q_head(t, r) * p.out_head_stride + d] =
        from_float<T>(L > 0.0f ? O / L : 0.0f);
  }
}

template <typename T, int DMAX>
cudaError_t launch_typed(const LaunchParams& p, const LaunchPlan& plan, cudaStream_t stream) {
  attention_kernel<T, DMAX><<<static_cast<unsigned>(plan.blocks), kThreads, 0, stream>>>(p, plan.tiles);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || plan.splits == 1) return e;
  combine_kernel<T, DMAX><<<static_cast<unsigned>(plan.blocks / plan.splits), kThreads, 0, stream>>>(p, plan.tiles);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_dtype(const LaunchParams& p, const LaunchPlan& plan, cudaStream_t stream) {
  switch (head_dim_bucket(p.head_dim)) {
    case 0: return launch_typed<T, 64>(p, plan, stream);
    case 1: return launch_typed<T, 128>(p, plan, stream);
    case 2: return launch_typed<T, 256>(p, plan, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t image_dtype(int head_dim) {
  cudaFuncAttributes a{};
  switch (head_dim_bucket(head_dim)) {
    case 0: return cudaFuncGetAttributes(&a, attention_kernel<T, 64>);
    case 1: return cudaFuncGetAttributes(&a, attention_kernel<T, 128>);
    case 2: return cudaFuncGetAttributes(&a, attention_kernel<T, 256>);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

int head_dim_bucket(int head_dim) {
  if (head_dim < 1) return -1;
  if (head_dim <= 64) return 0;
  if (head_dim <= 128) return 1;
  if (head_dim <= kMaxHeadDim) return 2;
  return -1;
}

int rows_per_block(int head_dim) {
  switch (head_dim_bucket(head_dim)) {
    case 0: return Bucket<64>::kRows;
    case 1: return Bucket<128>::kRows;
    default: return Bucket<256>::kRows;
  }
}

LaunchPlan plan_launch(int head_dim, int num_q_heads, int num_kv_heads, int num_seqs, int max_q_len, int max_kv_len,
                       int target_blocks, size_t workspace_floats) {
  const int rows = rows_per_block(head_dim), group = num_q_heads / num_kv_heads;
  LaunchPlan plan;
  plan.tiles = (static_cast<int64_t>(max_q_len) * group + rows - 1) / rows;
  const int64_t base = static_cast<int64_t>(num_seqs) * num_kv_heads * plan.tiles;
  int64_t splits = 1;
  if (base < target_blocks) {
    splits = (target_blocks + base - 1) / base;
    splits = std::min<int64_t>(splits, (static_cast<int64_t>(max_kv_len) + kMinKeysPerSplit - 1) / kMinKeysPerSplit);
    splits = std::min<int64_t>(splits, kMaxSplits);
    const int64_t row_floats = static_cast<int64_t>(rows) * (head_dim + 2);
    splits =
        std::min<int64_t>(splits, static_cast<int64_t>(workspace_floats) / std::max<int64_t>(1, base * row_floats));
    splits = std::max<int64_t>(splits, 1);
  }
  plan.splits = static_cast<int>(splits);
  plan.blocks = base * splits;
  return plan;
}

size_t workspace_floats_needed(int head_dim, int target_blocks) {
  return static_cast<size_t>(2) * target_blocks * rows_per_block(head_dim) * (head_dim + 2);
}

cudaError_t launch_attention(const LaunchParams& p, const LaunchPlan& plan, cudaStream_t stream) {
  if (plan.blocks < 1 || plan.blocks > 0x7fffffff || plan.splits < 1 || p.num_splits != plan.splits)
    return cudaErrorInvalidConfiguration;
  switch (p.dtype) {
    case LLM_DTYPE_F32: return launch_dtype<float>(p, plan, stream);
    case LLM_DTYPE_F16: return launch_dtype<__half>(p, plan, stream);
    case LLM_DTYPE_BF16: return launch_dtype<__nv_bfloat16>(p, plan, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t check_kernel_image(int dtype, int head_dim) {
  switch (dtype) {
    case LLM_DTYPE_F32: return image_dtype<float>(head_dim);
    case LLM_DTYPE_F16: return image_dtype<__half>(head_dim);
    case LLM_DTYPE_BF16: return image_dtype<__nv_bfloat16>(head_dim);
    default: return cudaErrorInvalidValue;
  }
}

int min_built_arch() {
#ifdef __CUDA_ARCH_LIST__
  constexpr int archs[] = {__CUDA_ARCH_LIST__};
  int lowest = archs[0];
  for (int a : archs) lowest = std::min(lowest, a);
  return lowest / 10;
#else
  return 0;
#endif
}

}  // namespace mha_cuda
