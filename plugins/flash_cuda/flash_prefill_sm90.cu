// Prefill on Hopper (sm_90a): the same FlashAttention forward as flash_prefill.cu, with both products on
// warpgroup MMAs (wgmma), which the H100/H200 run at about twice the rate of mma.sync, and FlashAttention-3's
// division of labour. A block holds kBM = 128 rows and has three warpgroups:
//   - one copies: Q (cp.async), then K and V tiles of 128 keys into kStages shared-memory stages each,
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
#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>

#include "flash_params.h"
#include "prefill_rows.cuh"
#include "ptx.cuh"
#include "warp_attention.cuh"
#include "wgmma.cuh"

namespace flash_cuda {
namespace {

template <int D>
struct Sm90PrefillTraits {
  static constexpr int kConsumers = 2;                           // warpgroups doing the math, 64 rows each
  static constexpr int kThreads = 128 * (kConsumers + 1);        // and one warpgroup copying K and V in
  static constexpr int kBM = 64 * kConsumers;                    // rows per block
  static constexpr int kBN = 128;                                // keys per tile
  static constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // setmaxnreg: 128 * 40 + 256 * 232 <= 64K
  static constexpr uint32_t kQBytes = kBM * D * 2;
  static constexpr uint32_t kKvBytes = kBN * D * 2;  // one K or V tile
  // K and V stages: as many as fit (the copies run that many tiles ahead of the math, which hides the
  // latency of L2 under load); 227 KiB of shared memory a block at most.
  static constexpr int kStages = D == 64 ? 4 : 3;
  // Q, kStages stages of K and of V, their barriers, and room to start the tiles on 1024 bytes (the
  // swizzle's period).
  static constexpr uint32_t kBarriers = kQBytes + 2 * kStages * kKvBytes;
  static constexpr size_t kSmem = kBarriers + 4 * kStages * 8 + 1024;
};

// Byte offset of element (r, c) (16-bit elements) in a tile of `rows` rows laid out for the tensor cores:
// column panels of 64 elements (128 bytes a row) one after the other, each `rows` x 128 bytes, and within
// every 8 rows of a panel the 16-byte chunks permuted by the row (chunk ^ row % 8): the 128-byte swizzle.
__device__ __forceinline__ uint32_t tile_offset(int r, int c, int rows) {
  return static_cast<uint32_t>((c >> 6) * rows * 128 + r * 128 + ((((c & 63) >> 3) ^ (r & 7)) << 4));
}

// wgmma shared-memory matrix descriptor with the 128-byte swizzle. K-major operands: sbo = 1024, the
// distance between 8-row groups (lbo unused). N-major (V): lbo = the distance between 64-column panels,
// sbo = 1024, between groups of 8 keys.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

// cp.async writes through the generic proxy and wgmma reads through the async proxy: order them.
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Shared-memory barriers (mbarrier) hand the K and V stages between the copying warpgroup and the math
// warpgroups: a stage's "full" barrier completes when its copy has landed, its "empty" barrier when every
// math thread is done reading it. Waits name the phase parity they expect (0, 1, 0, ... per use).
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
  } while (!done);
}

// The tensor memory accelerator: one instruction copies a box of a tensor (described by a tensor map made
// on the host) into shared memory, already in the 128-byte swizzle, and completes `bytes` on a barrier.
__device__ __forceinline__ void mbar_expect_bytes(uint32_t bar, uint32_t bytes) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n" ::"r"(bar),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                            uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
      "%5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

// K and V of a contiguous cache as 4-d tensors (head dim, kv head, position, slot) for the copy engine.
struct KvMaps {
  CUtensorMap k, v;
};

// Hands registers between the warpgroups of a block (sm_90a): the copier gives its spare ones to the math.
template <int N>
__device__ __forceinline__ void regs_shrink() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void regs_grow() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

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
  const uint32_t sq = base;
  constexpr int kStages = Tr::kStages;
  auto k_tile = [&](int stage) { return Tr::kQBytes + stage * 2 * Tr::kKvBytes; };  // offsets from base
  auto v_tile = [&](int stage) { return k_tile(stage) + Tr::kKvBytes; };

  // Heads vary fastest over the grid: the blocks running at once read many heads' keys, not one head's
  // from a few L2 slices.
  const int seq = blockIdx.z, kv_head = blockIdx.x, group = p.group;
  const BlockRows rows = block_rows(p, seq, blockIdx.y, gridDim.y, kBM);
  if (rows.count == 0) return;
  const RowLimits& limit_of = rows.limit_of;
  const int q0 = rows.q0, count = rows.count, block_limit = rows.block_limit, slot = rows.slot;
  const int64_t row0 = rows.row0;
  const int n_tiles = (block_limit + kBN - 1) / kBN;
  const T* Q = static_cast<const T*>(p.q);
  const T* K = static_cast<const T*>(p.kv.k);
  const T* V = static_cast<const T*>(p.kv.v);

  // Barriers per stage: full_k, full_v (count: the thread starting the copy engine, or the 128 copying
  // threads), empty_k, empty_v (the math threads); and q_full, for Q (the 128 copying threads).
  const uint32_t bars = base + Tr::kBarriers;
  auto full_k = [&](int stage) { return bars + 8 * stage; };
  auto full_v = [&](int stage) { return bars + 8 * (kStages + stage); };
  auto empty_k = [&](int stage) { return bars + 8 * (2 * kStages + stage); };
  auto empty_v = [&](int stage) { return bars + 8 * (3 * kStages + stage); };
  const uint32_t q_full = bars + 8 * 4 * kStages;
  if (threadIdx.x == 0) {
    for (int b = 0; b < 2 * kStages; ++b) mbar_init(bars + 8 * b, kTma ? 1 : 128);
    for (int b = 2 * kStages; b < 4 * kStages; ++b) mbar_init(bars + 8 * b, 128 * Tr::kConsumers);
    mbar_init(q_full, 128);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  const int wg = threadIdx.x >> 7;
  if (wg == Tr::kConsumers) {
    // The copying warpgroup: Q, then K_j and V_j into stage j % kStages once the math is done with the tile
    // before there; a full barrier completes when its copies land.
    regs_shrink<Tr::kProducerRegs>();
    const int pt = threadIdx.x - 128 * Tr::kConsumers;
    // Each thread copies one 16-byte column chunk of every kRowStep-th row: the shared-memory offsets of
    // its rows differ by whole 8-row swizzle periods, so one offset serves them all.
    constexpr int kRowStep = 128 / kChunks, kPasses = kBN / kRowStep;
    const int lc = pt % kChunks, lr = pt / kChunks;
    const uint32_t lane_off = tile_offset(lr, lc * 8, kBN);
    const bool col_ok = lc * 8 < p.head_dim;
    const int64_t contiguous_base =
        static_cast<int64_t>(slot) * p.kv.seq_stride + static_cast<int64_t>(kv_head) * p.kv.head_stride + lc * 8;
    // Keys [key0, key0 + kBN) of K or V into the tile at byte offset `tile`; keys past the block's limit and
    // components past head_dim are zero-filled (a masked key's probability is 0, and 0 * garbage may be NaN).
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
    // A barrier counting the 128 threads completes when all their copies so far have landed.
    auto announce = [&](uint32_t bar) {
      asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
    };
    if (n_tiles == 0) return;
    for (int c = pt; c < kBM * kChunks; c += 128) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const bool valid = r < count && col < p.head_dim;
      const int64_t off = valid ? row_offset(row0 + r, q0, group, kv_head, p.q_token_stride, p.q_head_stride) + col : 0;
      cp_async_16(smem + tile_offset(r, col, kBM), Q + off, valid);
    }
    announce(q_full);
    if constexpr (kTma) {
      // One thread drives the copy engine: a K or V tile is D / 64 boxes of 64 columns x kBN keys.
      if (pt == 0) {
        auto copy_tile = [&](const CUtensorMap* map, uint32_t tile, uint32_t bar, int key0) {
          mbar_expect_bytes(bar, Tr::kKvBytes);
#pragma unroll
          for (int panel = 0; panel < D / 64; ++panel)
            tma_load_4d(base + tile + panel * kBN * 128, map, panel * 64, kv_head, key0, slot, bar);
        };
        for (int j = 0; j < n_tiles; ++j) {
          const int stage = j % kStages, use = j / kStages;
          if (use > 0) mbar_wait(empty_k(stage), (use - 1) & 1);
          copy_tile(&maps.k, k_tile(stage), full_k(stage), j * kBN);
          if (use > 0) mbar_wait(empty_v(stage), (use - 1) & 1);
          copy_tile(&maps.v, v_tile(stage), full_v(stage), j * kBN);
        }
      }
    } else {
      for (int j = 0; j < n_tiles; ++j) {
        const int stage = j % kStages, use = j / kStages;
        if (use > 0) mbar_wait(empty_k(stage), (use - 1) & 1);
        load_keys(k_tile(stage), K, j * kBN);
        announce(full_k(stage));
        if (use > 0) mbar_wait(empty_v(stage), (use - 1) & 1);
        load_keys(v_tile(stage), V, j * kBN);
        announce(full_v(stage));
      }
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    return;
  }
  regs_grow<Tr::kConsumerRegs>();

  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t wrow0 = row0 + wg * 64;  // the warpgroup's first row
  const int64_t wleft = row0 + count - wrow0;
  const int wcount = wleft <= 0 ? 0 : wleft >= 64 ? 64 : static_cast<int>(wleft);
  // Every thread of a warpgroup takes the same branches around its MMAs: they are issued by all 128.
  const int wg_lo = wcount > 0 ? limit_of(wrow0) : 0;               // fewest keys a row of the warpgroup sees
  const int wg_hi = wcount > 0 ? limit_of(wrow0 + wcount - 1) : 0;  // most keys
  const int limit[2] = {limit_of(wrow0 + warp * 16 + g), limit_of(wrow0 + warp * 16 + g + 8)};
  const float scale = p.scale_log2;

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // m: running max, scaled (exp2 domain)
  // P of a tile as A fragments (keys 16kk.. are [kk]), for even and odd tiles: the products of tile i - 1
  // read one while the softmax of tile i writes the other (with a single array and a copy, the compiler
  // may merge the two and must then serialise the products).
  uint32_t p_even[kBN / 16][4], p_odd[kBN / 16][4];

  // S = Q K^T over the head dim, 16 at a time: within a 128-byte panel the next 16 columns start 32 bytes
  // on (the hardware applies the swizzle to the address bits).
  auto issue_scores = [&](float(&s)[kBN / 2], int stage) {
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
  // Online softmax of the tile at key0 into pn; s[4j + e] is row g (e < 2) or g + 8, key key0 + 8j + 2t +
  // (e & 1). Maxima of the raw scores, then one FMA per score: exp2(s * scale - max). Returns in alpha the
  // factor that takes O to this tile's maxima (applied by the caller once O is no longer being written).
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
  auto rescale = [&](const float(&alpha)[2]) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        o[4 * j + 2 * r] *= alpha[r];
        o[4 * j + 2 * r + 1] *= alpha[r];
      }
  };

  // Software pipeline, FlashAttention-3's intra-warpgroup overlap: iteration i issues S_i = Q K_i and
  // O += P_{i-1} V_{i-1} together, then runs the softmax of S_i on the CUDA cores while the tensor cores
  // do P_{i-1} V_{i-1}. So V trails K by a tile: iteration i reads K_i and V_{i-1}.
  // Each branch below issues and completes its own products (a product issued in one branch and awaited
  // in another makes the compiler serialise every warpgroup MMA).
  // The two math warpgroups take turns to issue their products (FlashAttention-3's ping-pong): one's
  // softmax then runs while the other's products do, rather than both waiting on the tensor cores at once.
  auto turn_wait = [&] { asm volatile("bar.sync %0, 256;\n" ::"r"(1 + wg) : "memory"); };
  auto turn_pass = [&] { asm volatile("bar.arrive %0, 256;\n" ::"r"(2 - wg) : "memory"); };
  if (wg == 1) turn_pass();  // warpgroup 0 goes first

  if (n_tiles > 0) mbar_wait(q_full, 0);
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
  // Every math thread waits for every tile, also one its warpgroup skips (rows that see none of its keys),
  // and releases it: that keeps the barriers' phases in step.
  for (int i = 0; i <= n_tiles; ++i) {
    const int ks = i % kStages, vs = (i + kStages - 1) % kStages;  // stages of K_i and V_{i-1}
    if (i < n_tiles) mbar_wait(full_k(ks), (i / kStages) & 1);
    if (i > 0) mbar_wait(full_v(vs), ((i - 1) / kStages) & 1);
    fence_async_smem();  // cp.async copies land through the generic proxy; the tensor cores read through the async one

    const int key0 = i * kBN;
    const bool scores = i < n_tiles && key0 < wg_hi;   // once false, false for every later tile
    const bool pending = i > 0 && key0 - kBN < wg_hi;  // tile i - 1's P V is still to do
    // (prev: P of tile i - 1; next: where P of tile i goes)
    auto step = [&](const uint32_t(&prev)[kBN / 16][4], uint32_t(&next)[kBN / 16][4]) {
      turn_wait();
      if (scores && !pending) {  // the first tile
        float s[kBN / 2], alpha[2];
        issue_scores(s, ks);
        turn_pass();
        wgmma_wait<0>();
        mbar_arrive(empty_k(ks));
        softmax(s, key0, next, alpha);
        rescale(alpha);
      } else if (scores) {
        float s[kBN / 2], alpha[2];
        issue_scores(s, ks);
        issue_pv(prev, vs);
        turn_pass();
        wgmma_wait<1>();  // S_i is done; P_{i-1} V_{i-1} may still run
        mbar_arrive(empty_k(ks));
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

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = wg * 64 + warp * 16 + g + 8 * r;
    if (row >= count) continue;
    T* dst = out + row_offset(row0 + row, q0, group, kv_head, p.out_token_stride, p.out_head_stride);
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      if (8 * j < p.head_dim)
        *reinterpret_cast<uint32_t*>(dst + 8 * j + 2 * t) =
            pack2<T>(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
  }
}

// Tensor maps of K and V for a contiguous cache: dims (head dim, kv head, position, slot), boxes of 64
// columns x kBN keys in the 128-byte swizzle. Positions past max_kv_len read as zeros. False when the
// driver cannot make them (the caller then copies with cp.async).
bool encode_maps(const Params& p, int bn, KvMaps* maps) {
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
  const cuuint32_t box[4] = {64, 1, static_cast<cuuint32_t>(bn), 1};
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type = p.fp16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  for (int i = 0; i < 2; ++i) {
    CUtensorMap* map = i == 0 ? &maps->k : &maps->v;
    void* src = const_cast<void*>(i == 0 ? p.kv.k : p.kv.v);
    if (encode(map, type, 4, src, dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
      return false;
  }
  return true;
}

template <typename T, int D>
cudaError_t launch_typed(const Params& p, cudaStream_t stream) {
  using Tr = Sm90PrefillTraits<D>;
  const int64_t tiles = (static_cast<int64_t>(p.max_q_len) * p.group + Tr::kBM - 1) / Tr::kBM;
  if (tiles > 65535 || p.num_seqs > 65535 || p.num_kv_heads > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(p.num_kv_heads), static_cast<unsigned>(tiles),
                  static_cast<unsigned>(p.num_seqs));
  KvMaps maps{};
  if (!p.kv.paged && encode_maps(p, Tr::kBN, &maps))
    prefill_sm90_kernel<T, D, true><<<grid, Tr::kThreads, Tr::kSmem, stream>>>(p, maps);
  else
    prefill_sm90_kernel<T, D, false><<<grid, Tr::kThreads, Tr::kSmem, stream>>>(p, maps);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_dim(const Params& p, cudaStream_t stream) {
  switch (kernel_dim(p.head_dim)) {
    case 64: return launch_typed<T, 64>(p, stream);
    case 128: return launch_typed<T, 128>(p, stream);
    default: return cudaErrorInvalidValue;
  }
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

template <typename T>
cudaError_t configure_dim(int head_dim) {
  switch (kernel_dim(head_dim)) {
    case 64: return configure_typed<T, 64>();
    case 128: return configure_typed<T, 128>();
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool sm90_prefill_dim(int head_dim) {
  const int d = kernel_dim(head_dim);
  return d == 64 || d == 128;
}

cudaError_t launch_prefill_sm90(const Params& p, cudaStream_t stream) {
  return p.fp16 ? launch_dim<__half>(p, stream) : launch_dim<__nv_bfloat16>(p, stream);
}

cudaError_t configure_prefill_sm90(bool fp16, int head_dim) {
  return fp16 ? configure_dim<__half>(head_dim) : configure_dim<__nv_bfloat16>(head_dim);
}

}  // namespace flash_cuda
