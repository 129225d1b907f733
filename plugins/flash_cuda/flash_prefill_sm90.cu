// Prefill on Hopper (sm_90a): the same FlashAttention forward as flash_prefill.cu, with both products on
// warpgroup MMAs (wgmma), which the H100/H200 run at about twice the rate of mma.sync, and FlashAttention-3's
// division of labour. The grid is persistent (a block per SM, taking work items of kBM = 128 rows in turn),
// and a block has three warpgroups:
//   - one copies: Q (cp.async) and K and V tiles of 128 keys into kStages shared-memory stages each,
//     through the tensor memory accelerator (contiguous caches) or cp.async (paged ones), handing them over
//     through shared-memory barriers; it gives most of its registers to the other two;
//   - two do the math, 64 rows each, taking turns to issue their products (ping-pong). Per tile:
//       S = Q K^T   wgmma, Q and K read from shared memory (both K-major), S in registers;
//       online softmax on the registers (each thread holds 2 rows, as in the sm_80 kernel);
//       O += P V    wgmma, P from registers (the accumulator layout is the A-fragment layout, converted
//                   in place), V read from shared memory N-major (head dim contiguous, as stored);
//     software-pipelined so that the softmax of tile i runs while the tensor cores do P V of tile i - 1.
// Shared-memory tiles use the hardware's 128-byte swizzle so that both the copies in and the tensor
// cores' reads are free of bank conflicts. Head dims whose kernel is 64 or 128 only (`sm90_prefill_dim`).
#include <algorithm>

#include "flash_params.h"
#include "kernel_dispatch.cuh"
#include "kv_tensor_maps.h"
#include "prefill_rows.cuh"
#include "ptx.cuh"
#include "tma.cuh"
#include "warp_attention.cuh"
#include "wgmma.cuh"

namespace flash_cuda {
namespace {

template <int D>
struct Sm90PrefillTraits {
  static constexpr int kConsumers = 2;                     // warpgroups doing the math, 64 rows each
  static constexpr int kThreads = 128 * (kConsumers + 1);  // and one warpgroup copying K and V in
  static constexpr int kBM = 64 * kConsumers;              // rows per block
  static constexpr int kBN = 128;                          // keys per tile
  // setmaxnreg moves registers within the block's launch allocation (kThreads x the per-thread count the
  // launch bounds allow: 64K / 384, down to a multiple of 8 = 168); a request past it waits forever.
  static constexpr int kProducerRegs = 56, kConsumerRegs = 224;
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= kThreads * (65536 / kThreads / 8 * 8));
  static constexpr uint32_t kQBytes = kBM * D * 2;
  static constexpr uint32_t kKvBytes = kBN * D * 2;  // one K or V tile
  // K and V stages: as many as fit (the copies run that many tiles ahead of the math, which hides the
  // latency of L2 under load); 227 KiB of shared memory a block at most.
  static constexpr int kStages = D == 64 ? 4 : 3;
  // Q buffers: with two, the next item's Q lands while the math is still on this one's (short items, as
  // at s = 512, otherwise wait on every Q's copy); d = 128 has room for one only.
  static constexpr int kQBufs = D == 64 ? 2 : 1;
  // Q buffers, kStages stages of K and of V, their barriers (4 a stage, 2 a Q buffer), the numbers of the
  // items whose Q is in (and of the next item drawn), and room to start the tiles on 1024 bytes (the
  // swizzle's period).
  static constexpr uint32_t kKvTiles = kQBufs * kQBytes;
  static constexpr uint32_t kBarriers = kKvTiles + 2 * kStages * kKvBytes;
  static constexpr uint32_t kItemSlot = kBarriers + (4 * kStages + 2 * kQBufs) * 8;
  static constexpr size_t kSmem = kItemSlot + 16 + 1024;
  static_assert(kSmem <= 227 * 1024);
};

// wgmma shared-memory matrix descriptor with the 128-byte swizzle. K-major operands: sbo = 1024, the
// distance between 8-row groups (lbo unused). N-major (V): lbo = the distance between 64-column panels,
// sbo = 1024, between groups of 8 keys.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

// cp.async writes through the generic proxy and wgmma reads through the async proxy: order them.
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Hands registers between the warpgroups of a block (sm_90a): the copier gives its spare ones to the math.
template <int N>
__device__ __forceinline__ void regs_shrink() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void regs_grow() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

// One work item is kBM rows of one (sequence, kv head); item w is kv head w % H of sequence (w / H) /
// tiles, at row tile (w / H) % tiles counted from the end. Heads vary fastest: the items running at once
// read many heads' keys, each head's from a few blocks at a time (which share them through L2); and the
// tiles whose rows see the most keys (causal) come first in each sequence.
struct WorkItem {
  int seq, kv_head;
  BlockRows rows;
  int n_tiles;  // key tiles its rows see (0 with no rows)
};

template <int kBM, int kBN>
__device__ __forceinline__ WorkItem work_item(const Params& p, int w, int row_tiles) {
  WorkItem item;
  item.kv_head = w % p.num_kv_heads;
  const int r = w / p.num_kv_heads;
  item.seq = r / row_tiles;
  item.rows = block_rows(p, item.seq, r % row_tiles, row_tiles, kBM);
  item.n_tiles = item.rows.count > 0 ? (item.rows.block_limit + kBN - 1) / kBN : 0;
  return item;
}

// A persistent grid: one block per SM takes item blockIdx.x, then the next one not yet taken (a counter in
// p.schedule: blocks that drew light causal items take more), and its copying warpgroup runs ahead across
// items (the next item's first K and V tiles and its Q arrive while the math finishes this one), which hides
// the start of every item rather than paying it block after block.
// kTma: K and V come through the tensor memory accelerator (contiguous caches); otherwise through cp.async
// (paged caches, whose blocks the maps cannot follow).
template <typename T, int D, bool kTma>
__global__ void __launch_bounds__(Sm90PrefillTraits<D>::kThreads, 1)
    prefill_sm90_kernel(const Params p, const __grid_constant__ KvMaps maps) {
  using Tr = Sm90PrefillTraits<D>;
  constexpr int kBM = Tr::kBM, kBN = Tr::kBN, kChunks = D / 8;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw), base = (raw + 1023) & ~1023u;
  unsigned char* smem = smem_raw + (base - raw);
  constexpr int kStages = Tr::kStages, kQBufs = Tr::kQBufs;
  auto q_tile = [&](int buf) { return base + buf * Tr::kQBytes; };
  auto k_tile = [&](int stage) { return Tr::kKvTiles + stage * 2 * Tr::kKvBytes; };  // offsets from base
  auto v_tile = [&](int stage) { return k_tile(stage) + Tr::kKvBytes; };

  const int group = p.group;
  const int row_tiles = static_cast<int>((static_cast<int64_t>(p.max_q_len) * group + kBM - 1) / kBM);
  const int items = row_tiles * p.num_seqs * p.num_kv_heads;
  const T* Q = static_cast<const T*>(p.q);
  const T* K = static_cast<const T*>(p.kv.k);
  const T* V = static_cast<const T*>(p.kv.v);

  // Barriers per stage: full_k, full_v (count: the thread starting the copy engine, or the 128 copying
  // threads), empty_k, empty_v (the math threads); q_full (the 128 copying threads, and the first of them
  // once more when it has written the item's number) and q_empty (the math threads, once done with an
  // item's Q). Both sides count K/V tiles and Q loads over all their items alike, which gives every wait
  // its stage and phase (Q load n goes to buffer n % kQBufs).
  const uint32_t bars = base + Tr::kBarriers;
  auto full_k = [&](int stage) { return bars + 8 * stage; };
  auto full_v = [&](int stage) { return bars + 8 * (kStages + stage); };
  auto empty_k = [&](int stage) { return bars + 8 * (2 * kStages + stage); };
  auto empty_v = [&](int stage) { return bars + 8 * (3 * kStages + stage); };
  auto q_full = [&](int buf) { return bars + 8 * (4 * kStages + buf); };
  auto q_empty = [&](int buf) { return bars + 8 * (4 * kStages + kQBufs + buf); };
  // [buf]: the item whose Q is in buffer buf; [kQBufs]: the next item drawn.
  volatile int* item_slot = reinterpret_cast<volatile int*>(smem + Tr::kItemSlot);
  if (threadIdx.x == 0) {
    for (int b = 0; b < 2 * kStages; ++b) mbar_init(bars + 8 * b, kTma ? 1 : 128);
    for (int b = 2 * kStages; b < 4 * kStages; ++b) mbar_init(bars + 8 * b, 128 * Tr::kConsumers);
    for (int b = 0; b < kQBufs; ++b) {
      mbar_init(q_full(b), 128 + 1);
      mbar_init(q_empty(b), 128 * Tr::kConsumers);
    }
    mbar_init_fence();
  }
  __syncthreads();

  const int wg = threadIdx.x >> 7;
  if (wg == Tr::kConsumers) {
    // The copying warpgroup: per item, K_0 and V_0, then Q once the math is done with what its buffer held,
    // then the other tiles; tile j of all the block's tiles goes to stage j % kStages once the math is
    // done with the tile before there. A full barrier completes when its copies land.
    regs_shrink<Tr::kProducerRegs>();
    const int pt = threadIdx.x - 128 * Tr::kConsumers;
    // Each thread copies one 16-byte column chunk of every kRowStep-th row: the shared-memory offsets of
    // its rows differ by whole 8-row swizzle periods, so one offset serves them all.
    constexpr int kRowStep = 128 / kChunks, kPasses = kBN / kRowStep;
    static_assert(kRowStep % 8 == 0, "a step of whole swizzle periods keeps a lane's swizzled column");
    const int lc = pt % kChunks, lr = pt / kChunks;
    const uint32_t lane_off = tile_offset(lr, lc * 8, kBN), lane_q_off = tile_offset(lr, lc * 8, kBM);
    const bool col_ok = lc * 8 < p.head_dim;
    // A barrier counting the 128 threads completes when all their copies so far have landed.
    auto announce = [&](uint32_t bar) {
      asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
    };
    int tiles_done = 0, q_loads = 0;
    // The next item: the first thread draws it, the warpgroup's named barrier hands it to the others.
    auto draw = [&](bool first) {
      if (pt == 0) {
        int w = first ? static_cast<int>(blockIdx.x) : static_cast<int>(gridDim.x) + atomicAdd(p.schedule, 1);
        if (w >= items) {  // this block is done; the last block done resets the counters for the next call
          w = -1;
          if (atomicAdd(p.schedule + 1, 1) == static_cast<int>(gridDim.x) - 1) {
            atomicExch(p.schedule, 0);
            atomicExch(p.schedule + 1, 0);
          }
        }
        item_slot[kQBufs] = w;
      }
      asm volatile("barrier.sync 5, 128;\n" ::: "memory");
      const int w = item_slot[kQBufs];
      asm volatile("barrier.sync 5, 128;\n" ::: "memory");  // all have read it before it is written again
      return w;
    };
    // Q's barriers carry the item's number to the math: q_full completes once Q has landed and the number
    // is written (-1: no more items).
    auto hand_over = [&](int w, const BlockRows* rows, int kv_head) {
      const int buf = q_loads % kQBufs, use = q_loads / kQBufs;
      if (use > 0) mbar_wait(q_empty(buf), (use - 1) & 1);
      if (rows) {
        // The thread's rows are lr, lr + kRowStep, ... (column chunk lc).
        RowWalker q(rows->row0 + lr, rows->q0, group, kv_head, kRowStep);
        uint32_t dst = buf * Tr::kQBytes + lane_q_off;
        for (int r = lr; r < kBM; r += kRowStep, dst += kRowStep * 128, q.next()) {
          const bool valid = r < rows->count && col_ok;
          const int64_t off = valid ? q.offset(p.q_token_stride, p.q_head_stride) + lc * 8 : 0;
          cp_async_16(smem + dst, Q + off, valid);
        }
      }
      announce(q_full(buf));
      if (pt == 0) {
        item_slot[buf] = w;
        mbar_arrive(q_full(buf));
      }
      ++q_loads;
    };
    for (int w = draw(true); w >= 0; w = draw(false)) {
      const WorkItem item = work_item<kBM, kBN>(p, w, row_tiles);
      if (item.rows.count == 0) continue;
      if (item.n_tiles == 0) {  // rows that see no keys: the math writes zeros, with no Q
        hand_over(w, nullptr, 0);
        continue;
      }
      const BlockRows& rows = item.rows;
      const int kv_head = item.kv_head, slot = rows.slot, block_limit = rows.block_limit;
      const int64_t contiguous_base =
          static_cast<int64_t>(slot) * p.kv.seq_stride + static_cast<int64_t>(kv_head) * p.kv.head_stride + lc * 8;
      // Keys [key0, key0 + kBN) of K or V into the tile at byte offset `tile`; keys past the block's limit
      // and components past head_dim are zero-filled (a masked key's probability is 0, and 0 * garbage may
      // be NaN).
      auto load_keys = [&](uint32_t tile, const T* src, int key0) {
#pragma unroll
        for (int ps = 0; ps < kPasses; ++ps) {
          const int key = key0 + lr + ps * kRowStep;
          const bool valid = key < block_limit && col_ok;
          const int64_t off = !valid       ? 0
                              : p.kv.paged ? kv_offset(p.kv, slot, key, kv_head) + lc * 8
                                           : contiguous_base + static_cast<int64_t>(key) * p.kv.token_stride;
          cp_async_16(smem + tile + lane_off + ps * kRowStep * 128, src + off, valid);
        }
      };
      // One thread drives the copy engine: a K or V tile is D / 64 boxes of 64 columns x kBN keys.
      auto copy_tile = [&](const CUtensorMap* map, uint32_t tile, uint32_t bar, int key0) {
        mbar_expect_bytes(bar, Tr::kKvBytes);
#pragma unroll
        for (int panel = 0; panel < D / 64; ++panel)
          tma_load_4d(base + tile + panel * kBN * 128, map, panel * 64, kv_head, key0, slot, bar);
      };
      for (int j = 0; j < item.n_tiles; ++j) {
        const int stage = (tiles_done + j) % kStages, use = (tiles_done + j) / kStages;
        if constexpr (kTma) {
          if (pt == 0) {
            if (use > 0) mbar_wait(empty_k(stage), (use - 1) & 1);
            copy_tile(&maps.k, k_tile(stage), full_k(stage), j * kBN);
            if (use > 0) mbar_wait(empty_v(stage), (use - 1) & 1);
            copy_tile(&maps.v, v_tile(stage), full_v(stage), j * kBN);
          }
        } else {
          if (use > 0) mbar_wait(empty_k(stage), (use - 1) & 1);
          load_keys(k_tile(stage), K, j * kBN);
          announce(full_k(stage));
          if (use > 0) mbar_wait(empty_v(stage), (use - 1) & 1);
          load_keys(v_tile(stage), V, j * kBN);
          announce(full_v(stage));
        }
        if (j == 0) hand_over(w, &rows, kv_head);
      }
      tiles_done += item.n_tiles;
    }
    hand_over(-1, nullptr, 0);
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    return;
  }
  regs_grow<Tr::kConsumerRegs>();

  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const float scale = p.scale_log2;
  // P of a tile as A fragments (keys 16kk.. are [kk]), for even and odd tiles: the products of tile i - 1
  // read one while the softmax of tile i writes the other (with a single array and a copy, the compiler
  // may merge the two and must then serialise the products).
  uint32_t p_even[kBN / 16][4], p_odd[kBN / 16][4];
  float o[D / 2];
  float m[2], l[2];  // m: running max, scaled (exp2 domain)

  // S = Q K^T over the head dim, 16 at a time: within a 128-byte panel the next 16 columns start 32 bytes
  // on (the hardware applies the swizzle to the address bits).
  auto issue_scores = [&](float(&s)[kBN / 2], uint32_t sq, int stage) {
    wgmma_fence();  // (s is written, not read: the first product overwrites it)
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t panel = kk >> 2, step = (kk & 3) * 32;
      const uint64_t da = smem_desc(sq + panel * kBM * 128 + wg * 64 * 128 + step, 16, 1024);
      const uint64_t db = smem_desc(base + k_tile(stage) + panel * kBN * 128 + step, 16, 1024);
      wgmma_ss<T, kBN>(s, da, db, kk > 0);
    }
    wgmma_commit();
  };
  // O += P V, 16 keys at a time: the next 16 keys start 16 rows (2048 bytes) on.
  auto issue_pv = [&](const uint32_t(&pa)[kBN / 16][4], int stage) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      const uint64_t dv = smem_desc(base + v_tile(stage) + kk * 16 * 128, kBN * 128, 1024);
      wgmma_rs<T, D>(o, pa[kk], dv, 1);
    }
    wgmma_commit();
  };
  auto rescale = [&](const float(&alpha)[2]) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        o[4 * j + 2 * r] *= alpha[r];
        o[4 * j + 2 * r + 1] *= alpha[r];
      }
  };
  // The two math warpgroups take turns to issue their products (FlashAttention-3's ping-pong): one's
  // softmax then runs while the other's products do, rather than both waiting on the tensor cores at once.
  // Both take one turn per tile step, item after item.
  auto turn_wait = [&] { asm volatile("bar.sync %0, 256;\n" ::"r"(1 + wg) : "memory"); };
  auto turn_pass = [&] { asm volatile("bar.arrive %0, 256;\n" ::"r"(2 - wg) : "memory"); };
  if (wg == 1) turn_pass();  // warpgroup 0 goes first

  int tiles_done = 0;
  for (int q_loads = 0;; ++q_loads) {
    const int qb = q_loads % kQBufs;
    mbar_wait(q_full(qb), (q_loads / kQBufs) & 1);  // the next item's Q (and number) is in
    const int w = item_slot[qb];
    const uint32_t sq = q_tile(qb);
    if (w < 0) break;
    const WorkItem item = work_item<kBM, kBN>(p, w, row_tiles);
    const BlockRows& rows = item.rows;
    const RowLimits& limit_of = rows.limit_of;
    const int n_tiles = item.n_tiles, kv_head = item.kv_head, block_limit = rows.block_limit;
    const int64_t wrow0 = rows.row0 + wg * 64;  // the warpgroup's first row
    const int64_t wleft = rows.row0 + rows.count - wrow0;
    const int wcount = wleft <= 0 ? 0 : wleft >= 64 ? 64 : static_cast<int>(wleft);
    // Every thread of a warpgroup takes the same branches around its MMAs: they are issued by all 128.
    const int wg_lo = wcount > 0 ? limit_of(wrow0) : 0;               // fewest keys a row of the warpgroup sees
    const int wg_hi = wcount > 0 ? limit_of(wrow0 + wcount - 1) : 0;  // most keys
    const int limit[2] = {limit_of(wrow0 + warp * 16 + g), limit_of(wrow0 + warp * 16 + g + 8)};

#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;

    // Online softmax of the tile at key0 into pn; s[4j + e] is row g (e < 2) or g + 8, key key0 + 8j + 2t
    // + (e & 1). Maxima of the raw scores, then one FMA per score: exp2(s * scale - max). Returns in alpha
    // the factor that takes O to this tile's maxima (applied by the caller once O is no longer being written).
    auto softmax = [&](float(&s)[kBN / 2], int key0, uint32_t(&pn)[kBN / 16][4], float(&alpha)[2]) {
      if (key0 + kBN > wg_lo) {
#pragma unroll
        for (int j = 0; j < kBN / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (key0 + 8 * j + 2 * t + (e & 1) >= limit[e >> 1]) s[4 * j + e] = -INFINITY;
      }
      // Maxima and sums in four independent partials per row: the dependent chains are a quarter as long.
      float mx4[2][4];
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int q = 0; q < 4; ++q) mx4[r][q] = -INFINITY;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float& x = mx4[e >> 1][(j & 1) * 2 + (e & 1)];
          x = fmaxf(x, s[4 * j + e]);
        }
      float base_m[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = fmaxf(fmaxf(mx4[r][0], mx4[r][1]), fmaxf(mx4[r][2], mx4[r][3]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[r], mx * scale);
        base_m[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet stays all-zero
        alpha[r] = exp2_approx(m[r] - base_m[r]);
        m[r] = m_new;
      }
      float sum4[2][4] = {};
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        float pe[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          pe[e] = exp2_approx(fmaf(s[8 * kk + e], scale, -base_m[(e >> 1) & 1]));
          sum4[(e >> 1) & 1][(kk & 1) * 2 + (e & 1)] += pe[e];
        }
        pn[kk][0] = pack2<T>(pe[0], pe[1]);
        pn[kk][1] = pack2<T>(pe[2], pe[3]);
        pn[kk][2] = pack2<T>(pe[4], pe[5]);
        pn[kk][3] = pack2<T>(pe[6], pe[7]);
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) l[r] = fmaf(l[r], alpha[r], (sum4[r][0] + sum4[r][1]) + (sum4[r][2] + sum4[r][3]));
    };
    // The copy engine brings whole tiles: keys of the last tile past the block's limit hold whatever the
    // cache holds there (masked scores, but 0 * NaN would still be NaN in P V). Each math warpgroup zeroes
    // those rows of V itself before its last P V (both may write the same zeros: harmless).
    auto clear_tail = [&](int tile_index, int stage) {
      if constexpr (kTma) {
        const int first = block_limit - tile_index * kBN;
        if (tile_index != n_tiles - 1 || first >= kBN) return;
        for (int c = threadIdx.x & 127; c < (kBN - first) * kChunks; c += 128) {
          const int r = first + c / kChunks, col = (c % kChunks) * 8;
          *reinterpret_cast<uint4*>(smem + v_tile(stage) + tile_offset(r, col, kBN)) = make_uint4(0, 0, 0, 0);
        }
        fence_async_smem();
        asm volatile("bar.sync %0, 128;\n" ::"r"(3 + wg) : "memory");
      }
    };

    // Q is handed back (so that the next item's may come in) after this warpgroup's last S = Q K^T.
    bool q_held = true;
    auto release_q = [&] {
      if (q_held) mbar_arrive(q_empty(qb));
      q_held = false;
    };

    // Software pipeline, FlashAttention-3's intra-warpgroup overlap: iteration i issues S_i = Q K_i and
    // O += P_{i-1} V_{i-1} together, then runs the softmax of S_i on the CUDA cores while the tensor cores
    // do P_{i-1} V_{i-1}. So V trails K by a tile: iteration i reads K_i and V_{i-1}.
    // Each branch below issues and completes its own products (a product issued in one branch and awaited
    // in another makes the compiler serialise every warpgroup MMA).
    // Every math thread waits for every tile, also one its warpgroup skips (rows that see none of its
    // keys), and releases it: that keeps the barriers' phases in step.
    for (int i = 0; i <= n_tiles; ++i) {
      const int ki = tiles_done + i, vi = ki - 1;  // block-wide numbers of K_i and V_{i-1}
      const int ks = ki % kStages, vs = (vi + kStages) % kStages;
      if (i < n_tiles) mbar_wait(full_k(ks), (ki / kStages) & 1);
      if (i > 0) mbar_wait(full_v(vs), (vi / kStages) & 1);
      fence_async_smem();  // cp.async copies land through the generic proxy; the tensor cores read through the async
                           // one

      const int key0 = i * kBN;
      const bool scores = i < n_tiles && key0 < wg_hi;   // once false, false for every later tile
      const bool pending = i > 0 && key0 - kBN < wg_hi;  // tile i - 1's P V is still to do
      const bool last_scores = scores && !(i + 1 < n_tiles && key0 + kBN < wg_hi);
      // (prev: P of tile i - 1; next: where P of tile i goes)
      auto step = [&](const uint32_t(&prev)[kBN / 16][4], uint32_t(&next)[kBN / 16][4]) {
        turn_wait();
        if (scores && !pending) {  // the first tile
          float s[kBN / 2], alpha[2];
          issue_scores(s, sq, ks);
          turn_pass();
          wgmma_wait<0>();
          mbar_arrive(empty_k(ks));
          if (last_scores) release_q();
          softmax(s, key0, next, alpha);
          rescale(alpha);
        } else if (scores) {
          float s[kBN / 2], alpha[2];
          issue_scores(s, sq, ks);
          issue_pv(prev, vs);
          turn_pass();
          wgmma_wait<1>();  // S_i is done; P_{i-1} V_{i-1} may still run
          mbar_arrive(empty_k(ks));
          if (last_scores) release_q();
          softmax(s, key0, next, alpha);
          wgmma_wait<0>();  // P_{i-1} V_{i-1} is in O: now O may be rescaled to this tile's maxima
          mbar_arrive(empty_v(vs));
          rescale(alpha);
        } else if (pending) {  // the last tile's P V
          clear_tail(i - 1, vs);
          issue_pv(prev, vs);
          turn_pass();
          wgmma_wait<0>();
          mbar_arrive(empty_v(vs));
        } else {
          turn_pass();
        }
      };
      if (i & 1)
        step(p_even, p_odd);
      else
        step(p_odd, p_even);
      if (i < n_tiles && !scores) mbar_arrive(empty_k(ks));
      if (i > 0 && !pending) mbar_arrive(empty_v(vs));
    }
    release_q();  // a warpgroup with no keys to see
    tiles_done += n_tiles;

#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    T* out = static_cast<T*>(p.out);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = wg * 64 + warp * 16 + g + 8 * r;
      if (row >= rows.count) continue;
      T* dst = out + row_offset(rows.row0 + row, rows.q0, group, kv_head, p.out_token_stride, p.out_head_stride);
      const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        if (8 * j < p.head_dim)
          *reinterpret_cast<uint32_t*>(dst + 8 * j + 2 * t) =
              pack2<T>(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
    }
  }
}

template <typename T, int D>
cudaError_t launch_typed(const Params& p, cudaStream_t stream) {
  using Tr = Sm90PrefillTraits<D>;
  const int64_t tiles = (static_cast<int64_t>(p.max_q_len) * p.group + Tr::kBM - 1) / Tr::kBM;
  const int64_t items = tiles * p.num_seqs * p.num_kv_heads;
  if (items > 0x7fffffff) return cudaErrorInvalidConfiguration;
  if (items < 1) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(items, std::max(p.sms, 1))));  // one block per SM
  KvMaps maps{};
  if (encode_kv_maps(p, Tr::kBN, &maps, CU_TENSOR_MAP_L2_PROMOTION_L2_256B))
    prefill_sm90_kernel<T, D, true><<<grid, Tr::kThreads, Tr::kSmem, stream>>>(p, maps);
  else
    prefill_sm90_kernel<T, D, false><<<grid, Tr::kThreads, Tr::kSmem, stream>>>(p, maps);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t configure_typed() {
  const int smem = static_cast<int>(Sm90PrefillTraits<D>::kSmem);
  cudaError_t e =
      cudaFuncSetAttribute(prefill_sm90_kernel<T, D, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(prefill_sm90_kernel<T, D, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  return e;
}

}  // namespace

bool sm90_prefill_dim(int head_dim) {
  const int d = kernel_dim(head_dim);
  return d == 64 || d == 128;
}

cudaError_t launch_prefill_sm90(const Params& p, cudaStream_t stream) {
  return with_kernel<64, 128>(p.fp16, p.head_dim,
                              [&](auto t, auto d) { return launch_typed<decltype(t), decltype(d)::value>(p, stream); });
}

cudaError_t configure_prefill_sm90(bool fp16, int head_dim) {
  return with_kernel<64, 128>(fp16, head_dim,
                              [](auto t, auto d) { return configure_typed<decltype(t), decltype(d)::value>(); });
}

}  // namespace flash_cuda
