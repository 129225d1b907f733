// Decode (flash-decoding): one query token per sequence against its KV cache. The rows of a block are
// the query heads of one kv head's group (16 per row tile), so each K/V byte is read once for the whole
// group. The keys of a sequence are cut into `num_splits` ranges, one block each, so that a small batch
// still fills the GPU; inside a block the four warps take interleaved 16-key slices of each 64-key tile
// (double-buffered through cp.async) and merge their softmax states through shared memory at the end.
// With several splits every block writes an unnormalised partial (m, l, o) and combine_kernel merges the
// ranges in split order; the orders are fixed, so results are bitwise reproducible for a launch plan.
// The real kv lengths are read on the device, so one captured launch serves every step of a CUDA graph.
#include <algorithm>

#include "flash_params.h"
#include "warp_attention.cuh"

namespace flash_cuda {
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kWarpKeys = 16;            // keys per warp per tile
constexpr int kBN = kWarps * kWarpKeys;  // keys per tile
constexpr int kRows = 16;                // group heads per row tile

template <typename T, int D>
constexpr size_t decode_smem_bytes() {
  return static_cast<size_t>(kRows + 4 * kBN) * Smem<D>::kStride * sizeof(T);
}

// Keys per split: the real length cut into `splits` ranges, rounded up to whole tiles.
__device__ __forceinline__ int split_chunk(int n_kv, int splits) {
  const int per = (n_kv + splits - 1) / splits;
  return (per + kBN - 1) / kBN * kBN;
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) decode_kernel(const Params p) {
  constexpr int kStride = Smem<D>::kStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sq = reinterpret_cast<T*>(smem_raw);
  T* sk = sq + kRows * kStride;  // [2][kBN][kStride]
  T* sv = sk + 2 * kBN * kStride;

  const int splits = p.num_splits;
  const int split = static_cast<int>(blockIdx.x) % splits, rtile = static_cast<int>(blockIdx.x) / splits;
  const int kv_head = blockIdx.y, seq = blockIdx.z, group = p.group;
  const int token = p.q_start[seq];
  const int n_kv = p.kv_len[seq], slot = p.seq_slot[seq];
  const int r0 = rtile * kRows, nrows = min(kRows, group - r0);
  const int chunk = split_chunk(n_kv, splits);
  const int k_begin = split * chunk, k_end = min(n_kv, k_begin + chunk);
  if (k_begin >= k_end) return;  // an empty range (short context): combine_kernel skips it
  const int n_tiles = (k_end - k_begin + kBN - 1) / kBN;

  const T* Q = static_cast<const T*>(p.q);
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < kRows * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool valid = r < nrows && col < p.head_dim;
    const int64_t off = valid ? token * p.q_token_stride + (kv_head * group + r0 + r) * p.q_head_stride + col : 0;
    cp_async_16(sq + r * kStride + col, Q + off, valid);
  }
  load_kv_tile<T, D, kBN, kThreads>(sk, sv, p.kv, slot, kv_head, k_begin, k_end, p.head_dim);
  cp_async_commit();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int limit[1][2] = {{k_end, k_end}};
  WarpAttention<T, D, 1> w;
  w.init();
  for (int i = 0; i < n_tiles; ++i) {
    if (i + 1 < n_tiles) {
      load_kv_tile<T, D, kBN, kThreads>(sk + ((i + 1) & 1) * kBN * kStride, sv + ((i + 1) & 1) * kBN * kStride, p.kv,
                                        slot, kv_head, k_begin + (i + 1) * kBN, k_end, p.head_dim);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int key0 = k_begin + i * kBN + warp * kWarpKeys;
    if (key0 < k_end) {
      const int tile_row = (i & 1) * kBN + warp * kWarpKeys;
      w.template step<kWarpKeys>(sq, sk + tile_row * kStride, sv + tile_row * kStride, key0, limit,
                                 key0 + kWarpKeys > k_end, p.scale_log2);
    }
    __syncthreads();
  }
  w.finish();

  // Merge the warps' states in warp order, in the (now free) K/V buffers.
  float* sm_o = reinterpret_cast<float*>(sk);  // [kWarps][kRows][D]
  float* sm_m = sm_o + kWarps * kRows * D;     // [kWarps][kRows]
  float* sm_l = sm_m + kWarps * kRows;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = g + 8 * i;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      sm_o[(warp * kRows + r) * D + 8 * j + 2 * t] = w.o[0][j][2 * i];
      sm_o[(warp * kRows + r) * D + 8 * j + 2 * t + 1] = w.o[0][j][2 * i + 1];
    }
    if (t == 0) {
      sm_m[warp * kRows + r] = w.m[0][i];
      sm_l[warp * kRows + r] = w.l[0][i];
    }
  }
  __syncthreads();

  T* out = static_cast<T*>(p.out);
  const int64_t parts = static_cast<int64_t>(p.num_seqs) * p.num_q_heads;
  for (int e = threadIdx.x; e < nrows * D; e += kThreads) {
    const int r = e / D, d = e - r * D;
    if (d >= p.head_dim) continue;
    float M = -INFINITY;
#pragma unroll
    for (int x = 0; x < kWarps; ++x) M = fmaxf(M, sm_m[x * kRows + r]);
    float L = 0.0f, O = 0.0f;
#pragma unroll
    for (int x = 0; x < kWarps; ++x) {
      const float m = sm_m[x * kRows + r];
      const float wt = m == -INFINITY ? 0.0f : exp2_approx(m - M);
      L = fmaf(sm_l[x * kRows + r], wt, L);
      O = fmaf(sm_o[(x * kRows + r) * D + d], wt, O);
    }
    const int head = kv_head * group + r0 + r;
    if (splits == 1) {
      out[token * p.out_token_stride + head * p.out_head_stride + d] = static_cast<T>(L > 0.0f ? O / L : 0.0f);
    } else {
      const int64_t part = static_cast<int64_t>(split) * parts + static_cast<int64_t>(seq) * p.num_q_heads + head;
      if (d == 0) {
        p.workspace[2 * part] = M;
        p.workspace[2 * part + 1] = L;
      }
      p.workspace[2 * splits * parts + part * D + d] = O;
    }
  }
}

// Merges the non-empty splits of one (sequence, query head) in split order.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) combine_kernel(const Params p) {
  const int head = blockIdx.x, seq = blockIdx.y, splits = p.num_splits;
  const int n_kv = p.kv_len[seq];
  const int active = min(splits, (n_kv + split_chunk(n_kv, splits) - 1) / split_chunk(n_kv, splits));
  const int64_t parts = static_cast<int64_t>(p.num_seqs) * p.num_q_heads;
  const int64_t first = static_cast<int64_t>(seq) * p.num_q_heads + head;  // split s: first + s * parts
  const float* ml = p.workspace;
  const float* o = p.workspace + 2 * splits * parts;
  float M = -INFINITY;
  for (int s = 0; s < active; ++s) M = fmaxf(M, ml[2 * (first + s * parts)]);
  T* out = static_cast<T*>(p.out) + p.q_start[seq] * p.out_token_stride + head * p.out_head_stride;
  for (int d = threadIdx.x; d < p.head_dim; d += kThreads) {
    float L = 0.0f, O = 0.0f;
    for (int s = 0; s < active; ++s) {
      const int64_t part = first + s * parts;
      const float m = ml[2 * part];
      const float wt = m == -INFINITY ? 0.0f : exp2_approx(m - M);
      L = fmaf(ml[2 * part + 1], wt, L);
      O = fmaf(o[part * D + d], wt, O);
    }
    out[d] = static_cast<T>(L > 0.0f ? O / L : 0.0f);
  }
}

template <typename T, int D>
cudaError_t launch_typed(const Params& p, cudaStream_t stream) {
  const int row_tiles = (p.group + kRows - 1) / kRows;
  if (p.num_seqs > 65535 || p.num_kv_heads > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(p.num_splits * row_tiles), static_cast<unsigned>(p.num_kv_heads),
                  static_cast<unsigned>(p.num_seqs));
  decode_kernel<T, D><<<grid, kThreads, decode_smem_bytes<T, D>(), stream>>>(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || p.num_splits == 1) return e;
  combine_kernel<T, D>
      <<<dim3(static_cast<unsigned>(p.num_q_heads), static_cast<unsigned>(p.num_seqs)), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_dim(const Params& p, cudaStream_t stream) {
  switch (kernel_dim(p.head_dim)) {
    case 16: return launch_typed<T, 16>(p, stream);
    case 32: return launch_typed<T, 32>(p, stream);
    case 64: return launch_typed<T, 64>(p, stream);
    case 96: return launch_typed<T, 96>(p, stream);
    case 128: return launch_typed<T, 128>(p, stream);
    case 256: return launch_typed<T, 256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T, int D>
cudaError_t configure_typed() {
  return cudaFuncSetAttribute(decode_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(decode_smem_bytes<T, D>()));
}

template <typename T>
cudaError_t configure_dim(int head_dim) {
  switch (kernel_dim(head_dim)) {
    case 16: return configure_typed<T, 16>();
    case 32: return configure_typed<T, 32>();
    case 64: return configure_typed<T, 64>();
    case 96: return configure_typed<T, 96>();
    case 128: return configure_typed<T, 128>();
    case 256: return configure_typed<T, 256>();
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

int decode_splits(const Params& p, int sms, size_t workspace_floats) {
  const int64_t row_tiles = (p.group + kRows - 1) / kRows;
  const int64_t base = static_cast<int64_t>(p.num_seqs) * p.num_kv_heads * row_tiles;
  const int64_t target = 4 * static_cast<int64_t>(std::max(sms, 1));
  int64_t splits = (target + base - 1) / base;
  splits = std::min<int64_t>(splits, (static_cast<int64_t>(p.max_kv_len) + kBN - 1) / kBN);
  splits = std::min<int64_t>(splits, kMaxSplits);
  const int64_t per_split = static_cast<int64_t>(p.num_seqs) * p.num_q_heads * (kernel_dim(p.head_dim) + 2);
  splits = std::min<int64_t>(splits, static_cast<int64_t>(workspace_floats) / std::max<int64_t>(per_split, 1));
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

size_t decode_workspace_floats(int head_dim, int num_q_heads, int max_batch) {
  // Enough for kMaxSplits up to 16 sequences; larger batches fill the GPU with fewer splits.
  return static_cast<size_t>(kMaxSplits) * std::min(max_batch, 16) * num_q_heads * (kernel_dim(head_dim) + 2);
}

cudaError_t launch_decode(const Params& p, cudaStream_t stream) {
  if (p.num_splits < 1 || p.num_splits > kMaxSplits) return cudaErrorInvalidConfiguration;
  return p.fp16 ? launch_dim<__half>(p, stream) : launch_dim<__nv_bfloat16>(p, stream);
}

cudaError_t configure_decode(bool fp16, int head_dim) {
  return fp16 ? configure_dim<__half>(head_dim) : configure_dim<__nv_bfloat16>(head_dim);
}

}  // namespace flash_cuda
