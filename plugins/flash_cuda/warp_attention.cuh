// What one warp does in every flash_cuda kernel: 16 * MT query rows, fp32 output accumulators and the online-softmax
// state (running max m and sum l, base 2), advanced over blocks of keys staged in shared memory. FlashAttention-2's
// inner loop, one warp's share of it.
//
// Fragment layout (mma.m16n8k16): lane = 4 * g + t holds, of a 16x8 fp32 tile, rows g and g + 8 at
// columns 2t and 2t + 1. So each thread owns two rows; a row's statistics are reduced over the four
// lanes of its quad.
#pragma once

#include <cmath>

#include "flash_params.h"
#include "ptx.cuh"

namespace flash_cuda {

// Shared-memory tiles are row-major with rows padded by 8 elements (16 bytes): consecutive rows then
// start in different 16-byte bank groups, so ldmatrix's 8-row reads are conflict-free for every head dim.
template <int D>
struct Smem {
  static constexpr int kStride = D + 8;
};

__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// llm_kv_offset on the device.
__device__ __forceinline__ int64_t kv_offset(const KvParams& kv, int slot, int pos, int kv_head) {
  if (kv.paged) {
    const int32_t block = kv.block_table[static_cast<int64_t>(slot) * kv.max_blocks_per_seq + pos / kv.block_size];
    return static_cast<int64_t>(block) * kv.block_stride + static_cast<int64_t>(pos % kv.block_size) * kv.token_stride +
           static_cast<int64_t>(kv_head) * kv.head_stride;
  }
  return static_cast<int64_t>(slot) * kv.seq_stride + static_cast<int64_t>(pos) * kv.token_stride +
         static_cast<int64_t>(kv_head) * kv.head_stride;
}

// Stages keys [key0, key0 + ROWS) of one kv head into smem K and V tiles with cp.async; keys at or past
// `end` and components at or past `dim` are zero-filled (never garbage: a masked key's probability is 0,
// and 0 * NaN would still be NaN).
template <typename T, int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_kv_tile(T* sk, T* sv, const KvParams& kv, int slot, int kv_head, int key0, int end,
                                             int dim) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  const T* K = static_cast<const T*>(kv.k);
  const T* V = static_cast<const T*>(kv.v);
#pragma unroll
  for (int c = threadIdx.x; c < ROWS * kChunks; c += THREADS) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool valid = key0 + r < end && col < dim;
    const int64_t off = valid ? kv_offset(kv, slot, key0 + r, kv_head) + col : 0;
    cp_async_16(sk + r * Smem<D>::kStride + col, K + off, valid);
    cp_async_16(sv + r * Smem<D>::kStride + col, V + off, valid);
  }
}

// Where element (r, c) of a K or V tile is, in elements from the tile's start: rows padded to
// Smem<D>::kStride (kPanelRows = 0, the cp.async layout), or the copy engine's 128-byte swizzle over
// 64-column panels of kPanelRows rows (tma.cuh's tile_offset, in elements).
template <int D, int kPanelRows>
__device__ __forceinline__ int kv_elem(int r, int c) {
  if constexpr (kPanelRows == 0)
    return r * Smem<D>::kStride + c;
  else
    return (c >> 6) * kPanelRows * 64 + r * 64 + ((((c & 63) >> 3) ^ (r & 7)) << 3);
}

template <typename T, int D, int MT>
struct WarpAttention {
  static constexpr int kStride = Smem<D>::kStride;
  float o[MT][D / 8][4];     // C fragments of the output per 16-row m tile; d tile j: columns 8j + 2t, 8j + 2t + 1
  float m[MT][2], l[MT][2];  // rows g and g + 8 of each m tile (l: this thread's partial sum until finish())

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int j = 0; j < D / 8; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
      m[mt][0] = m[mt][1] = -INFINITY;
      l[mt][0] = l[mt][1] = 0.0f;
    }
  }

  // Advances the warp's 16 * MT query rows (sq: their Q rows in shared memory, re-read with ldmatrix at
  // every step rather than held in registers, which leaves the registers to the accumulators) over NK
  // keys at sk/sv rows [0, NK) (laid out as kv_elem<D, kPanelRows> says), the first being key `key0`.
  // Key k is visible to this thread's row i of m tile mt (0: row g, 1: row g + 8) when k < limit[mt][i];
  // `masked` false promises every key is visible to every row (no compares; a masked score is replaced,
  // so a NaN key row past the limit never reaches P). Every K and V fragment loaded serves all MT m tiles.
  template <int NK, int kPanelRows = 0>
  __device__ __forceinline__ void step(const T* sq, const T* sk, const T* sv, int key0, const int (&limit)[MT][2],
                                       bool masked, float scale_log2) {
    const int lane = threadIdx.x & 31, t = lane & 3;
    const int arow = (lane & 7) + 8 * ((lane >> 3) & 1), acol = 8 * (lane >> 4);  // A (row-major) addressing
    float s[MT][NK / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < NK / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
    {
      const int row = (lane & 7) + 8 * (lane >> 4), col = 8 * ((lane >> 3) & 1);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(a[mt], sq + (mt * 16 + arow) * kStride + kk * 16 + acol);
#pragma unroll
        for (int nn = 0; nn < NK / 16; ++nn) {
          uint32_t b[4];
          ldmatrix_x4(b, sk + kv_elem<D, kPanelRows>(nn * 16 + row, kk * 16 + col));
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_16816<T>(s[mt][2 * nn], a[mt], b[0], b[1]);
            mma_16816<T>(s[mt][2 * nn + 1], a[mt], b[2], b[3]);
          }
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      // Scale into the exp2 domain, mask, and take the row maxima over the quad.
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < NK / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float v = s[mt][j][e] * scale_log2;
          if (masked && key0 + 8 * j + 2 * t + (e & 1) >= limit[mt][e >> 1]) v = -INFINITY;
          s[mt][j][e] = v;
          mx[e >> 1] = fmaxf(mx[e >> 1], v);
        }
      }
      float base[2], alpha[2];
      bool moved = false;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        const float m_new = fmaxf(m[mt][i], mx[i]);
        base[i] = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet stays all-zero
        alpha[i] = exp2_approx(m[mt][i] - base[i]);
        moved |= m_new != m[mt][i];
        m[mt][i] = m_new;
        l[mt][i] *= alpha[i];
      }
      // O moves to the new maxima only when one moved somewhere in the warp (once the first keys are in,
      // rarely): otherwise alpha is exp2(0) = 1 for every row and the D / 2 products are skipped.
      if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
        for (int j = 0; j < D / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[mt][j][e] *= alpha[e >> 1];
      }
#pragma unroll
      for (int j = 0; j < NK / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pe = exp2_approx(s[mt][j][e] - base[e >> 1]);
          s[mt][j][e] = pe;
          l[mt][e >> 1] += pe;
        }
      }
    }
    // O += P V: the S accumulators of two key octets are exactly the A fragment of a 16-key slice.
    const int row = (lane & 7) + 8 * ((lane >> 3) & 1), col = 8 * (lane >> 4);
#pragma unroll
    for (int kk = 0; kk < NK / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, sv + kv_elem<D, kPanelRows>(kk * 16 + row, dn * 16 + col));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(o[mt][2 * dn], a[mt], b[0], b[1]);
          mma_16816<T>(o[mt][2 * dn + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }

  // Completes the row sums over the quad (call once, after the last step).
  __device__ __forceinline__ void finish() {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        l[mt][i] += __shfl_xor_sync(0xffffffffu, l[mt][i], 1);
        l[mt][i] += __shfl_xor_sync(0xffffffffu, l[mt][i], 2);
      }
  }
};

}  // namespace flash_cuda
