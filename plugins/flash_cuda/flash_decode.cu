// Decode (flash-decoding): one query token per sequence against its KV cache. The rows of a block are
// the query heads of one kv head's group (16 per row tile), so each K/V byte is read once for the whole
// group. The keys of a sequence are cut into `num_splits` ranges, one block each, so that a small batch
// still fills the GPU; inside a block the four warps take interleaved 16-key slices of each 64-key tile
// (kStages tiles in flight) and merge their softmax states through shared memory at the end.
// With several splits every block has an unnormalised partial (m, l, o) of its range, merged in split
// order. On Hopper, where the splits of a (sequence, kv head, row tile) fit one thread block cluster, each
// block pushes its partial into the first block's shared memory (st.async, counted on that block's
// barrier) and is done; the first block merges them once they have all landed. Otherwise each block writes
// its partial to global memory and the last block to finish (counted on a device counter) merges them.
// Either way: one launch, and the orders are fixed, so results are bitwise reproducible for a launch plan.
// The real kv lengths are read on the device, so one captured launch serves every step of a CUDA graph.
// K and V come in with cp.async (any GPU, any cache) or, on Hopper with a contiguous cache, through the
// copy engine: four instructions a tile from one thread rather than sixteen copies from each, and the
// engine keeps more of the stream in flight than the load units do. There, where the runtime allows
// (llm_attention_args.overlap), the kernel starts while the q/k/v product before it finishes and copies its
// cached tiles meanwhile, and lets the product after it start at once, to stream its weights meanwhile too.
#include <algorithm>
#include <initializer_list>

#include "cluster.cuh"
#include "flash_params.h"
#include "kernel_dispatch.cuh"
#include "kv_tensor_maps.h"
#include "tma.cuh"
#include "warp_attention.cuh"

namespace flash_cuda {
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kWarpKeys = 16;            // keys per warp per tile
constexpr int kBN = kWarps * kWarpKeys;  // keys per tile
constexpr int kRows = 16;                // group heads per row tile
// Tiles in flight per block: decode is a stream of K and V, and a block's bytes in flight bound its rate
// (3 stages: 2 blocks of 109 KiB per SM at d=128, which is what the split plan aims for).
constexpr int kStages = 3;

// K and V tiles: rows padded to Smem<D>::kStride (cp.async), or (kTma) the copy engine's swizzled
// panels, which start on 1024 bytes.
template <int D, bool kTma>
constexpr int kTileElems = kTma ? kBN* D : kBN* Smem<D>::kStride;

template <typename T, int D, bool kTma>
constexpr size_t decode_smem_bytes() {
  return (kTma ? 1024 : 0) +
         (static_cast<size_t>(kRows) * Smem<D>::kStride + 2 * kStages * kTileElems<D, kTma>)*sizeof(T);
}

// The cluster merge's landing area in the first block, after Q: a slot per split, each a partial of the
// cluster's rows (at most kRows of the group): o as [row][D], then (m, l) as [row][2], padded to 16 bytes
// (the pushes are 16-byte stores).
template <int D>
__host__ __device__ constexpr int cluster_slot_floats(int rows) {
  return (rows * (D + 2) + 3) / 4 * 4;
}
template <int D>
constexpr size_t cluster_slots_bytes(int splits, int rows) {
  return static_cast<size_t>(splits) * cluster_slot_floats<D>(rows) * sizeof(float);
}

// Keys per split: the real length cut into `splits` ranges, rounded up to whole tiles.
__device__ __forceinline__ int split_chunk(int n_kv, int splits) {
  const int per = (n_kv + splits - 1) / splits;
  return (per + kBN - 1) / kBN * kBN;
}

// Four columns of an output row, o / l (0 where l is 0): one 8-byte store where the layout allows it.
template <typename T>
__device__ __forceinline__ void store_out4(T* o, const float (&O)[4], float L, bool packed) {
  T v[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) v[c] = static_cast<T>(L > 0.0f ? O[c] / L : 0.0f);
  if (packed) {
    uint2 u;
    static_assert(sizeof(T) == 2, "16-bit outputs");
    memcpy(&u, v, sizeof(u));
    *reinterpret_cast<uint2*>(o) = u;
  } else {
#pragma unroll
    for (int c = 0; c < 4; ++c) o[c] = v[c];
  }
}

// Stages keys [key0, key0 + kBN) of one kv head into smem K and V tiles with cp.async, as load_kv_tile
// does. Decode is short of instruction issue (two warps a scheduler, most of a tile's instructions were
// the copies' address arithmetic and zero-fill checks), so a whole tile of a contiguous cache, the common
// case, takes a lean path: every thread copies one 16-byte column chunk of every kRowStep-th row, at
// addresses a fixed stride apart, with no checks.
template <typename T, int D>
__device__ __forceinline__ void load_decode_tile(T* sk, T* sv, const KvParams& kv, int slot, int kv_head, int key0,
                                                 int end, int dim) {
  constexpr int kChunks = D / 8, kRowStep = kThreads / kChunks;
  if constexpr (kThreads % kChunks == 0 && kBN % kRowStep == 0) {  // (not d = 96: rows do not divide evenly)
    if (!kv.paged && key0 + kBN <= end && dim == D) {
      const int r0 = threadIdx.x / kChunks, col = (threadIdx.x % kChunks) * 8;
      const int64_t off = static_cast<int64_t>(slot) * kv.seq_stride +
                          static_cast<int64_t>(key0 + r0) * kv.token_stride +
                          static_cast<int64_t>(kv_head) * kv.head_stride + col;
      const T* k = static_cast<const T*>(kv.k) + off;
      const T* v = static_cast<const T*>(kv.v) + off;
      const int64_t step = static_cast<int64_t>(kRowStep) * kv.token_stride;
#pragma unroll
      for (int j = 0; j < kBN / kRowStep; ++j) {
        const int r = r0 + j * kRowStep;
        cp_async_16(sk + r * Smem<D>::kStride + col, k + j * step);
        cp_async_16(sv + r * Smem<D>::kStride + col, v + j * step);
      }
      return;
    }
  }
  load_kv_tile<T, D, kBN, kThreads>(sk, sv, kv, slot, kv_head, key0, end, dim);
}

// kCluster: the launch's clusters are the splits of one (sequence, kv head, row tile), rank = split.
template <typename T, int D, bool kTma, bool kCluster>
__global__ void __launch_bounds__(kThreads) decode_kernel(const Params p, const __grid_constant__ KvMaps maps) {
  constexpr int kStride = Smem<D>::kStride, kTile = kTileElems<D, kTma>;
  constexpr int kPanelRows = kTma ? kBN : 0;  // the K/V tile layout (kv_elem)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // [kStages] K tiles, [kStages] V tiles, Q (16 rows of kStride); kTma: from the first 1024-byte boundary.
  unsigned char* smem = smem_raw;
  if constexpr (kTma) smem += ((smem_addr(smem_raw) + 1023) & ~1023u) - smem_addr(smem_raw);
  T* sk = reinterpret_cast<T*>(smem);
  T* sv = sk + kStages * kTile;
  T* sq = sv + kStages * kTile;
  __shared__ __align__(8) uint64_t full[kStages];  // kTma: stage s holds its tile once full[s] completes
  __shared__ __align__(8) uint64_t landed;         // kCluster, first block: every peer's partial is in

  const int splits = p.num_splits;
  const int split = static_cast<int>(blockIdx.x) % splits, rtile = static_cast<int>(blockIdx.x) / splits;
  const int kv_head = blockIdx.y, seq = blockIdx.z, group = p.group;
  const int token = p.q_start[seq];
  const int n_kv = p.kv_len[seq], slot = p.seq_slot[seq];
  const int r0 = rtile * kRows, nrows = min(kRows, group - r0), landing_rows = min(kRows, group);
  const int chunk = split_chunk(n_kv, splits);
  const int k_begin = split * chunk, k_end = min(n_kv, k_begin + chunk);
  // An empty range (short context) writes nothing and is not counted; an empty context still has its
  // first split write zeros. (In a cluster every block takes part in the merge: an empty range is a
  // partial of no keys, m = -inf, l = 0.)
  if (!kCluster && k_begin >= k_end && (split > 0 || n_kv > 0)) return;
  const int n_tiles = k_begin < k_end ? (k_end - k_begin + kBN - 1) / kBN : 0;

  if constexpr (kTma) {
    if (threadIdx.x == 0) {
      for (int s = 0; s < kStages; ++s) mbar_init(smem_addr(&full[s]), 1);
      if (kCluster && split == 0) {  // the peers' partials: o of their rows' real columns, and (m, l)
        mbar_init(smem_addr(&landed), 1);
        mbar_expect_bytes(smem_addr(&landed), (splits - 1) * nrows * (p.head_dim + 2) * sizeof(float));
      }
      mbar_init_fence();
    }
    __syncthreads();
    // The first block's barrier is published to the cluster; peers wait on this before they push.
    if constexpr (kCluster) cluster_arrive_relaxed();
  }
  // cp.async: tiles 0 .. kStages - 2 (Q with the first); then every iteration waits for its tile and
  // starts the one kStages - 1 on, into the stage the previous iteration read (the barrier between says
  // all are done with it), so kStages - 1 tiles stream in while one is computed. A group is committed
  // every time, also an empty one, so the wait counts stay uniform. kTma: the first thread starts the copy
  // engine on a tile, whole boxes of 64 columns x kBN keys, and the engine's barrier makes the tile
  // visible to every thread, so a stage is refilled as soon as every warp is done with it (the barrier at
  // the end of an iteration), not after the next tile has landed: all kStages tiles are in flight while
  // a block waits, where cp.async has kStages - 1. Q is then the only cp.async group.
  auto load = [&](int i) {
    if constexpr (kTma) {
      if (i < n_tiles && threadIdx.x == 0) {
        const uint32_t bar = smem_addr(&full[i % kStages]);
        mbar_expect_bytes(bar, 2 * kTile * sizeof(T));
#pragma unroll
        for (int panel = 0; panel < D / 64; ++panel) {
          const int key0 = k_begin + i * kBN;
          tma_load_4d(smem_addr(sk + (i % kStages) * kTile) + panel * kBN * 128, &maps.k, panel * 64, kv_head, key0,
                      slot, bar);
          tma_load_4d(smem_addr(sv + (i % kStages) * kTile) + panel * kBN * 128, &maps.v, panel * 64, kv_head, key0,
                      slot, bar);
        }
      }
    } else {
      if (i < n_tiles)
        load_decode_tile<T, D>(sk + (i % kStages) * kTile, sv + (i % kStages) * kTile, p.kv, slot, kv_head,
                               k_begin + i * kBN, k_end, p.head_dim);
      cp_async_commit();
    }
  };
  // early_start (the runtime's LLM_OVERLAP_EARLY_START): launched with PDL, the block starts copying its
  // cached tiles, those wholly before the sequence's new token (at n_kv - 1), before it waits on the kernel
  // before, which writes q and the new token's K and V. The lengths, the slots and the cached entries are
  // final already (the SDK's promise). q, the new token's tile and the output only after the wait.
  const bool early = kTma && p.early_start;
  auto cached = [&](int i) { return k_begin + (i + 1) * kBN <= n_kv - 1; };
  if (early) {
#pragma unroll
    for (int i = 0; i < kStages; ++i)
      if (cached(i)) load(i);
    // early_next (LLM_OVERLAP_EARLY_NEXT): the kernel after may start now and stream its weights while this
    // one waits, not during this one's tail, where its loads held back the merge's stores on their SMs
    // (TinyLlama at batch 1: the first blocks' merge took 2.0 us with them, 0.9 us without).
    if (p.early_next) griddep_launch_dependents();
  }
  // Where the merges below keep their partials: the warps' (in the K/V stages, once free), the splits' (the
  // workspace, or kCluster: the first block's landing slots, after Q).
  // Rows of o padded to D + 8 floats: a warp's stores of its rows g = 0..7 then fall in distinct banks (at D
  // floats a row every g hit the same bank, an 8-way conflict on every store: 2,048 wavefronts a block at
  // d = 128). Only the real rows are stored. (H200, batch 1: TinyLlama +1%, Llama-2-7B +0.5%.)
  constexpr int kOStride = D + 8;
  static_assert((kWarps * kRows * (kOStride + 2) + kMaxSplits * kRows * 2 + kRows) * sizeof(float) <=
                    2 * kStages * kTile * sizeof(T),
                "the merges' buffers fit in the K/V stages");
  float* sm_o = reinterpret_cast<float*>(sk);      // [kWarps][kRows][kOStride]
  float* sm_m = sm_o + kWarps * kRows * kOStride;  // [kWarps][kRows]
  float* sm_l = sm_m + kWarps * kRows;
  T* out = static_cast<T*>(p.out);
  const bool packed =
      ((p.out_token_stride | p.out_head_stride) & 3) == 0 && (reinterpret_cast<uintptr_t>(out) & 7) == 0;
  const int64_t parts = static_cast<int64_t>(p.num_seqs) * p.num_q_heads;
  // Partials: o at [split][seq][q head][D] (16-byte aligned for the merge's loads), (m, l) after them at
  // [split][seq][q head].
  float* po = p.workspace;
  float* ml = p.workspace + splits * parts * D;
  const int64_t first = static_cast<int64_t>(seq) * p.num_q_heads + kv_head * group + r0;  // row 0, split 0
  float* landing = reinterpret_cast<float*>(sq + kRows * kStride);
  const int partial_floats = cluster_slot_floats<D>(landing_rows);
  // kCluster under early start and early next: the first block runs the last merge once while it waits on
  // the kernel before, on whatever its landing slots hold and storing nothing, so that the merge's
  // instructions and parameters are on the SM when it runs for real (cold, it took twice as long as a
  // second run). The same code both times: a loop that is not unrolled. Only where the runtime lets the
  // kernel after in early, which it does where the products are small, so that decode's blocks are
  // resident long before the q/k/v product ends (H200, batch 1: TinyLlama +2%). Ungated, Llama-2-7B measured
  // 0.5% slower: its blocks find room on the SMs only in that product's last wave, and then, we think, wait
  // too little for the pass to fit.
  const bool dry = kCluster && early && p.early_next && split == 0;
#pragma unroll 1
  for (int pass = dry ? 0 : 1; pass < 2; ++pass) {
    if (pass == 1) {
      if (early) griddep_wait();
      const T* Q = static_cast<const T*>(p.q);
      constexpr int kChunks = D / 8;
      for (int c = threadIdx.x; c < kRows * kChunks; c += kThreads) {
        const int r = c / kChunks, col = (c % kChunks) * 8;
        const bool valid = r < nrows && col < p.head_dim;
        const int64_t off = valid ? token * p.q_token_stride + (kv_head * group + r0 + r) * p.q_head_stride + col : 0;
        cp_async_16(sq + r * kStride + col, Q + off, valid);
      }
      if constexpr (kTma) cp_async_commit();                // Q
      constexpr int kAhead = kTma ? kStages : kStages - 1;  // tiles started before the first is used
#pragma unroll
      for (int i = 0; i < kAhead; ++i)
        if (!(early && cached(i))) load(i);
      // early_next without early start: the kernel after may start once this block's loads are out.
      if (kTma && p.early_next && !early) griddep_launch_dependents();
      if constexpr (kTma) {
        cp_async_wait<0>();
        __syncthreads();  // Q, seen by every warp
      }

      const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
      const int limit[1][2] = {{k_end, k_end}};
      WarpAttention<T, D, 1> w;
      w.init();
      for (int i = 0; i < n_tiles; ++i) {
        if constexpr (kTma) {
          mbar_wait(smem_addr(&full[i % kStages]), (i / kStages) & 1);
          // The boxes are whole: V rows past the range hold what the cache holds there (their scores are
          // masked, but 0 * NaN would still be NaN in P V). Zeroed here, seen by all after the barrier. (The
          // condition is the same in every thread: the range's last tile.)
          const int valid = k_end - (k_begin + i * kBN);
          if (valid < kBN) {
            unsigned char* v_tile = reinterpret_cast<unsigned char*>(sv + (i % kStages) * kTile);
            for (int c = threadIdx.x; c < (kBN - valid) * (D / 64) * 8; c += kThreads) {
              const int r = valid + c / ((D / 64) * 8), panel = (c / 8) % (D / 64);
              *reinterpret_cast<uint4*>(v_tile + panel * kBN * 128 + r * 128 + (c % 8) * 16) = make_uint4(0, 0, 0, 0);
            }
            __syncthreads();
          }
        } else {
          cp_async_wait<kStages - 2>();
          __syncthreads();
          load(i + kStages - 1);
        }
        const int key0 = k_begin + i * kBN + warp * kWarpKeys;
        if (key0 < k_end) {
          const int row = kv_elem<D, kPanelRows>(warp * kWarpKeys, 0);  // the warp's first key row in the tile
          w.template step<kWarpKeys, kPanelRows>(sq, sk + (i % kStages) * kTile + row, sv + (i % kStages) * kTile + row,
                                                 key0, limit, key0 + kWarpKeys > k_end, p.scale_log2);
        }
        if (kTma && i + kStages < n_tiles) {
          __syncthreads();  // every warp is done with this stage: it takes tile i + kStages
          load(i + kStages);
        }
      }
      cp_async_wait<0>();  // (only empty groups remain: nothing lands in the merge buffers below)
      __syncthreads();     // every warp is done with the stages: they become the merge buffers
      w.finish();

      // Merge the warps' states in warp order, in the (now free) K/V buffers. (The merge of the splits below is
      // the same fold, written out again on purpose: one helper for both measured 10-14% slower at batch 1 on
      // the H200, the compiler then laying out the whole kernel differently; docs/PERFORMANCE.md.)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = g + 8 * i;
        if (r < nrows) {
#pragma unroll
          for (int j = 0; j < D / 8; ++j)
            *reinterpret_cast<float2*>(sm_o + (warp * kRows + r) * kOStride + 8 * j + 2 * t) =
                make_float2(w.o[0][j][2 * i], w.o[0][j][2 * i + 1]);
          if (t == 0) {
            sm_m[warp * kRows + r] = w.m[0][i];
            sm_l[warp * kRows + r] = w.l[0][i];
          }
        }
      }
      __syncthreads();

      uint32_t first_landing = 0, first_landed = 0;
      if constexpr (kCluster) {
        first_landing = cluster_peer(smem_addr(landing + split * partial_floats), 0);
        first_landed = cluster_peer(smem_addr(&landed), 0);
        cluster_wait();  // the first block's barrier is initialised
      }
      // Four columns of a row a thread (head dims are multiples of 8: four columns are all in or all out).
      for (int e = threadIdx.x; e < nrows * (D / 4); e += kThreads) {
        const int r = e / (D / 4), d = (e - r * (D / 4)) * 4;
        if (d >= p.head_dim) continue;
        float M = -INFINITY;
#pragma unroll
        for (int x = 0; x < kWarps; ++x) M = fmaxf(M, sm_m[x * kRows + r]);
        float L = 0.0f, O[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int x = 0; x < kWarps; ++x) {
          const float m = sm_m[x * kRows + r];
          const float wt = m == -INFINITY ? 0.0f : exp2_approx(m - M);
          const float4 o = *reinterpret_cast<const float4*>(sm_o + (x * kRows + r) * kOStride + d);
          L = fmaf(sm_l[x * kRows + r], wt, L);
          O[0] = fmaf(o.x, wt, O[0]), O[1] = fmaf(o.y, wt, O[1]);
          O[2] = fmaf(o.z, wt, O[2]), O[3] = fmaf(o.w, wt, O[3]);
        }
        if (splits == 1) {
          T* o = out + token * p.out_token_stride + (kv_head * group + r0 + r) * p.out_head_stride + d;
          store_out4(o, O, L, packed);
        } else if constexpr (kCluster) {  // into the split's slot in the first block
          if (split == 0) {
            *reinterpret_cast<float4*>(landing + r * D + d) = make_float4(O[0], O[1], O[2], O[3]);
            if (d == 0) *reinterpret_cast<float2*>(landing + landing_rows * D + 2 * r) = make_float2(M, L);
          } else {
            cluster_push(first_landing + (r * D + d) * sizeof(float), O, first_landed);
            if (d == 0) cluster_push(first_landing + (landing_rows * D + 2 * r) * sizeof(float), M, L, first_landed);
          }
        } else {
          const int64_t part = split * parts + first + r;
          if (d == 0) {
            ml[2 * part] = M;
            ml[2 * part + 1] = L;
          }
          *reinterpret_cast<float4*>(po + part * D + d) = make_float4(O[0], O[1], O[2], O[3]);
        }
      }
      if (splits == 1) return;
      if constexpr (kCluster) {
        // A peer is done once its partial is pushed: nothing reads its shared memory. The first block waits
        // for every peer's partial to land, then folds each element's (m, l, o) in split order.
        if (split > 0) return;
        __syncthreads();  // its own slot
        mbar_wait<true>(smem_addr(&landed), 0);
      }
    }  // pass == 1
    if constexpr (kCluster) {
      // Branch-free, so that every slot's loads are in flight together (a thread is alone on its element's
      // chain here); slots past `splits` read slot 0 and weigh nothing. Against a branch a slot: +1% end to
      // end on TinyLlama and stories110M at batch 1 (H200, docs/PERFORMANCE.md).
      for (int e = threadIdx.x; e < nrows * (D / 4); e += kThreads) {
        const int r = e / (D / 4), d = (e - r * (D / 4)) * 4;
        if (d >= p.head_dim) continue;
        float m[kMaxClusterSplits], l[kMaxClusterSplits];
#pragma unroll
        for (int x = 0; x < kMaxClusterSplits; ++x) {
          const float2 ml = *reinterpret_cast<const float2*>(landing + (x < splits ? x : 0) * partial_floats +
                                                             landing_rows * D + 2 * r);
          m[x] = x < splits ? ml.x : -INFINITY;
          l[x] = ml.y;
        }
        float M = -INFINITY;
#pragma unroll
        for (int x = 0; x < kMaxClusterSplits; ++x) M = fmaxf(M, m[x]);
        float L = 0.0f, O[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int x = 0; x < kMaxClusterSplits; ++x) {
          const float wt = m[x] == -INFINITY ? 0.0f : exp2_approx(m[x] - M);
          const float4 o =
              *reinterpret_cast<const float4*>(landing + (x < splits ? x : 0) * partial_floats + r * D + d);
          L = fmaf(l[x], wt, L);
          O[0] = fmaf(o.x, wt, O[0]), O[1] = fmaf(o.y, wt, O[1]);
          O[2] = fmaf(o.z, wt, O[2]), O[3] = fmaf(o.w, wt, O[3]);
        }
        T* o = out + token * p.out_token_stride + (kv_head * group + r0 + r) * p.out_head_stride + d;
        if (pass == 1) store_out4(o, O, L, packed);
      }
    }
  }  // pass
  if constexpr (kCluster) return;

  // The last block of this (sequence, kv head, row tile) to get here merges the non-empty splits in split
  // order. Classic threadfence reduction: partials out, fence, count; the last one fences and reads them.
  __shared__ int is_last;
  const int active = n_kv == 0 ? 1 : (n_kv + chunk - 1) / chunk;  // the splits with keys (or split 0)
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const int row_tiles = static_cast<int>(gridDim.x) / splits;
    int* counter = p.split_counters + (static_cast<int64_t>(seq) * p.num_kv_heads + kv_head) * row_tiles + rtile;
    is_last = atomicAdd(counter, 1) == active - 1;
    if (is_last) *counter = 0;  // every block of this call has counted: ready for the next call
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  // Every split's (m, l) of every row in one round of loads; then each row's weights exp2(m - M) and its
  // total L; then each thread folds four columns of a row over the splits, kMergeLoads splits' loads in
  // flight at a time. (A loop over the splits per element was a chain of L2 round trips: at batch 1 it
  // made a group of 8 with 11 splits slower than with 4.) The order of the sums is the split order.
  constexpr int kMergeLoads = 8;
  float* sm_w = sm_l + kWarps * kRows;       // [kMaxSplits][kRows]: each split's m, then its weight
  float* sm_pl = sm_w + kMaxSplits * kRows;  // [kMaxSplits][kRows]: each split's l
  float* sm_L = sm_pl + kMaxSplits * kRows;  // [kRows]
  for (int i = threadIdx.x; i < active * nrows; i += kThreads) {
    const int x = i / nrows, r = i - x * nrows;
    const int64_t part = x * parts + first + r;
    sm_w[x * kRows + r] = __ldcg(ml + 2 * part);
    sm_pl[x * kRows + r] = __ldcg(ml + 2 * part + 1);
  }
  __syncthreads();
  if (threadIdx.x < nrows) {
    const int r = threadIdx.x;
    float M = -INFINITY;
    for (int x = 0; x < active; ++x) M = fmaxf(M, sm_w[x * kRows + r]);
    float L = 0.0f;
    for (int x = 0; x < active; ++x) {
      const float m = sm_w[x * kRows + r];
      const float wt = m == -INFINITY ? 0.0f : exp2_approx(m - M);
      L = fmaf(sm_pl[x * kRows + r], wt, L);
      sm_w[x * kRows + r] = wt;
    }
    sm_L[r] = L;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < nrows * (D / 4); e += kThreads) {
    const int r = e / (D / 4), d = (e - r * (D / 4)) * 4;
    if (d >= p.head_dim) continue;  // (head dims are multiples of 8: four columns are all in or all out)
    float O[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int x0 = 0; x0 < active; x0 += kMergeLoads) {
      float4 v[kMergeLoads];
#pragma unroll
      for (int j = 0; j < kMergeLoads; ++j)
        if (x0 + j < active)
          v[j] = __ldcg(reinterpret_cast<const float4*>(po + ((x0 + j) * parts + first + r) * D + d));
#pragma unroll
      for (int j = 0; j < kMergeLoads; ++j)
        if (x0 + j < active) {
          const float wt = sm_w[(x0 + j) * kRows + r];
          O[0] = fmaf(v[j].x, wt, O[0]), O[1] = fmaf(v[j].y, wt, O[1]);
          O[2] = fmaf(v[j].z, wt, O[2]), O[3] = fmaf(v[j].w, wt, O[3]);
        }
    }
    const float L = sm_L[r];
    T* o = out + token * p.out_token_stride + (kv_head * group + r0 + r) * p.out_head_stride + d;
    store_out4(o, O, L, packed);
  }
}

// The copy engine's boxes are 64 columns wide: kernels whose dim is a multiple of 64.
template <int D>
constexpr bool kTmaDim = D % 64 == 0;

template <typename T, int D>
cudaError_t launch_typed(const Params& p, cudaStream_t stream) {
  const int row_tiles = (p.group + kRows - 1) / kRows;
  if (p.num_seqs > 65535 || p.num_kv_heads > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(p.num_splits * row_tiles), static_cast<unsigned>(p.num_kv_heads),
                  static_cast<unsigned>(p.num_seqs));
  KvMaps maps{};
  if constexpr (kTmaDim<D>) {
    if (p.decode_tma && encode_kv_maps(p, kBN, &maps, CU_TENSOR_MAP_L2_PROMOTION_NONE)) {
      const bool cluster = p.cluster_merge && p.num_splits > 1;
      cudaLaunchConfig_t config{};
      config.gridDim = grid;
      config.blockDim = dim3(kThreads);
      config.dynamicSmemBytes = decode_smem_bytes<T, D, true>() +
                                (cluster ? cluster_slots_bytes<D>(p.num_splits, std::min(p.group, kRows)) : size_t{0});
      config.stream = stream;
      cudaLaunchAttribute attrs[2]{};
      if (cluster) {
        cudaLaunchAttribute& a = attrs[config.numAttrs++];
        a.id = cudaLaunchAttributeClusterDimension;
        a.val.clusterDim.x = static_cast<unsigned>(p.num_splits);
        a.val.clusterDim.y = a.val.clusterDim.z = 1;
      }
      if (p.early_start) {
        cudaLaunchAttribute& a = attrs[config.numAttrs++];
        a.id = cudaLaunchAttributeProgrammaticStreamSerialization;
        a.val.programmaticStreamSerializationAllowed = 1;
      }
      config.attrs = attrs;
      return cudaLaunchKernelEx(&config, cluster ? decode_kernel<T, D, true, true> : decode_kernel<T, D, true, false>,
                                p, maps);
    }
  }
  decode_kernel<T, D, false, false><<<grid, kThreads, decode_smem_bytes<T, D, false>(), stream>>>(p, maps);
  return cudaGetLastError();
}

// The cluster kernel's dynamic shared memory: the plain kernel's and the landing slots, at most what a
// block of it may opt in to on the current device.
template <typename T, int D>
size_t cluster_smem_limit() {
  int device = 0, optin = 0;
  cudaFuncAttributes a{};
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
      cudaFuncGetAttributes(&a, decode_kernel<T, D, true, true>) != cudaSuccess) {
    cudaGetLastError();
    return decode_smem_bytes<T, D, true>();
  }
  return std::min(decode_smem_bytes<T, D, true>() + cluster_slots_bytes<D>(kMaxClusterSplits, kRows),
                  static_cast<size_t>(optin) - a.sharedSizeBytes);
}

template <typename T, int D>
cudaError_t configure_typed() {
  cudaError_t e = cudaFuncSetAttribute(decode_kernel<T, D, false, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(decode_smem_bytes<T, D, false>()));
  if constexpr (kTmaDim<D>) {
    if (e == cudaSuccess)
      e = cudaFuncSetAttribute(decode_kernel<T, D, true, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(decode_smem_bytes<T, D, true>()));
    if (e == cudaSuccess)
      e = cudaFuncSetAttribute(decode_kernel<T, D, true, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(cluster_smem_limit<T, D>()));
  }
  return e;
}

// capacity[s]: clusters of s blocks of the cluster kernel the current device holds at once, for groups
// of `group` query heads (the first block's landing slots grow with the cluster and the rows); 0 where
// the slots would not fit the shared memory a block may have.
template <typename T, int D>
cudaError_t cluster_capacity_typed(int group, int* capacity) {
  std::fill(capacity, capacity + kMaxClusterSplits + 1, 0);
  if constexpr (kTmaDim<D>) {
    const auto kernel = decode_kernel<T, D, true, true>;
    // Clusters of more than 8 blocks are not portable: allowed where the device has them.
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
      cudaGetLastError();
    for (int s = 2; s <= kMaxClusterSplits; ++s) {
      const size_t smem = decode_smem_bytes<T, D, true>() + cluster_slots_bytes<D>(s, std::min(group, kRows));
      if (smem > cluster_smem_limit<T, D>()) continue;
      cudaLaunchConfig_t config{};
      config.gridDim = dim3(static_cast<unsigned>(s));
      config.blockDim = dim3(kThreads);
      config.dynamicSmemBytes = smem;
      cudaLaunchAttribute cluster{};
      cluster.id = cudaLaunchAttributeClusterDimension;
      cluster.val.clusterDim.x = static_cast<unsigned>(s);
      cluster.val.clusterDim.y = cluster.val.clusterDim.z = 1;
      config.attrs = &cluster;
      config.numAttrs = 1;
      int n = 0;
      if (cudaOccupancyMaxActiveClusters(&n, kernel, &config) != cudaSuccess) {
        cudaGetLastError();  // (a size the device does not take)
        n = 0;
      }
      capacity[s] = n;
    }
  }
  return cudaSuccess;
}

}  // namespace

int decode_splits(const Params& p, int sms, size_t workspace_floats, int wanted) {
  const int64_t row_tiles = (p.group + kRows - 1) / kRows;
  const int64_t base = static_cast<int64_t>(p.num_seqs) * p.num_kv_heads * row_tiles;  // blocks per split
  const int64_t kv_tiles = std::max<int64_t>((static_cast<int64_t>(p.max_kv_len) + kBN - 1) / kBN, 1);
  const int64_t per_split = static_cast<int64_t>(p.num_seqs) * p.num_q_heads * (kernel_dim(p.head_dim) + 2);
  const int64_t most = std::max<int64_t>(
      1, std::min<int64_t>(
             {kMaxSplits, kv_tiles, static_cast<int64_t>(workspace_floats) / std::max<int64_t>(per_split, 1)}));
  if (wanted > 0) return static_cast<int>(std::min<int64_t>(wanted, most));
  // At most one block per SM (a second block on an SM makes it the last to finish), but blocks of at
  // least four tiles where the GPU stays at least one block per SM without them; then no split left
  // empty by the rounding to whole tiles. From sweeps over 1-32 splits on the H200 (docs/PERFORMANCE.md).
  // Two blocks per SM were best while the split merge was a chain of L2 round trips per element; with
  // the merge's loads in flight together, fewer, longer blocks win (sweep: b = 1, 4K keys, 16 splits 1.31
  // TB/s against 32's 1.10; b = 8, 1K, 2 splits 2.10 against 4's 1.96).
  // Under early start (the runtime's LLM_OVERLAP_EARLY_START) up to 1.5 blocks per SM: the blocks copy their
  // cached tiles while the product before still runs, so what follows its wait is shorter with more, shorter
  // blocks (H200: Llama-2-7B at batch 1, 4 -> 5-6 splits once past 8 key tiles, +0.7%; TinyLlama at batch 8 +0.6%).
  const int64_t sm = std::max<int64_t>(p.early_start ? sms * 3 / 2 : sms, 1);
  int64_t splits = std::min<int64_t>(std::max<int64_t>(sm / base, 1), most);
  while (splits > 1 && (kv_tiles + splits - 1) / splits < 4 && base * (splits - 1) >= sm) --splits;
  const int64_t tiles_per_split = (kv_tiles + splits - 1) / splits;
  return static_cast<int>((kv_tiles + tiles_per_split - 1) / tiles_per_split);
}

size_t decode_workspace_floats(int head_dim, int num_q_heads, int max_batch) {
  // Enough for kMaxSplits up to 16 sequences; larger batches fill the GPU with fewer splits.
  return static_cast<size_t>(kMaxSplits) * std::min(max_batch, 16) * num_q_heads * (kernel_dim(head_dim) + 2);
}

size_t decode_counter_ints(int num_q_heads, int num_kv_heads, int max_batch) {
  const int group = num_q_heads / std::max(num_kv_heads, 1);
  return static_cast<size_t>(max_batch) * num_kv_heads * ((group + kRows - 1) / kRows);
}

cudaError_t launch_decode(const Params& p, cudaStream_t stream) {
  if (p.num_splits < 1 || p.num_splits > kMaxSplits) return cudaErrorInvalidConfiguration;
  return with_any_kernel(p.fp16, p.head_dim,
                         [&](auto t, auto d) { return launch_typed<decltype(t), decltype(d)::value>(p, stream); });
}

cudaError_t configure_decode(bool fp16, int head_dim) {
  return with_any_kernel(fp16, head_dim,
                         [](auto t, auto d) { return configure_typed<decltype(t), decltype(d)::value>(); });
}

cudaError_t decode_cluster_capacity(bool fp16, int head_dim, int group, int* capacity) {
  return with_any_kernel(fp16, head_dim, [&](auto t, auto d) {
    return cluster_capacity_typed<decltype(t), decltype(d)::value>(group, capacity);
  });
}

bool decode_cluster_fits(const Params& p, const int* capacity) {
  if (p.num_splits < 2 || p.num_splits > kMaxClusterSplits) return false;
  // Clusters of more than 8 blocks only where every block streams at most two tiles: the cluster saves a
  // fixed ~1.3 us (H200, batch 1, 9 splits of 1-2 tiles: 6.2 -> 5.0 us a call), but with 16 splits of 4
  // and 16 tiles (batch 1, 4K and 16K keys) it measured 5% and 12% slower than the global merge.
  const int64_t kv_tiles = std::max<int64_t>((static_cast<int64_t>(p.max_kv_len) + kBN - 1) / kBN, 1);
  if (p.num_splits > 8 && (kv_tiles + p.num_splits - 1) / p.num_splits > 2) return false;
  const int64_t clusters =
      static_cast<int64_t>(p.num_seqs) * p.num_kv_heads * ((p.group + kRows - 1) / kRows);  // one per split set
  return clusters <= capacity[p.num_splits];
}

}  // namespace flash_cuda
