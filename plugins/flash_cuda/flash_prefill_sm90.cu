// Prefill on Hopper (sm_90a): the same FlashAttention forward as flash_prefill.cu, with both products on
// warpgroup MMAs (wgmma), which the H100/H200 run at about twice the rate of mma.sync. A block holds
// kBM = 128 rows, 64 per warpgroup, and streams keys in tiles of 128 through two shared-memory stages
// (cp.async: the next tile loads while this one is multiplied). Per tile and warpgroup:
//   S = Q K^T   wgmma, Q and K read from shared memory (both K-major), S in registers;
//   online softmax on the registers (each thread holds 2 rows, as in the sm_80 kernel);
//   O += P V    wgmma, P from registers (the accumulator layout is the A-fragment layout, converted in
//               place), V read from shared memory N-major (head dim contiguous, as stored).
// Shared-memory tiles use the hardware's 128-byte swizzle so that both the copies in and the tensor
// cores' reads are free of bank conflicts. Head dims whose kernel is 64 or 128 only (`sm90_prefill_dim`).
#include "flash_params.h"
#include "prefill_rows.cuh"
#include "ptx.cuh"
#include "warp_attention.cuh"
#include "wgmma.cuh"

namespace flash_cuda {
namespace {

template <int D>
struct Sm90PrefillTraits {
  static constexpr int kWarpGroups = 2;
  static constexpr int kThreads = 128 * kWarpGroups;
  static constexpr int kBM = 64 * kWarpGroups;  // rows per block
  static constexpr int kBN = 128;               // keys per tile
  static constexpr uint32_t kQBytes = kBM * D * 2;
  static constexpr uint32_t kKvBytes = kBN * D * 2;  // one K or V tile
  // Q, two stages of K and V, and room to start the tiles on 1024 bytes (the swizzle's period).
  static constexpr size_t kSmem = kQBytes + 4 * kKvBytes + 1024;
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

template <typename T, int D>
__global__ void __launch_bounds__(Sm90PrefillTraits<D>::kThreads, 1) prefill_sm90_kernel(const Params p) {
  using Tr = Sm90PrefillTraits<D>;
  constexpr int kBM = Tr::kBM, kBN = Tr::kBN, kChunks = D / 8;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw), base = (raw + 1023) & ~1023u;
  unsigned char* smem = smem_raw + (base - raw);
  const uint32_t sq = base;
  auto k_tile = [&](int stage) { return Tr::kQBytes + stage * 2 * Tr::kKvBytes; };  // offsets from base
  auto v_tile = [&](int stage) { return k_tile(stage) + Tr::kKvBytes; };

  const int seq = blockIdx.z, kv_head = blockIdx.y;
  const int q0 = p.q_start[seq], q_len = p.q_start[seq + 1] - q0, n_kv = p.kv_len[seq];
  const int group = p.group;
  const RowLimits limit_of{static_cast<int64_t>(max(q_len, 0)) * group, group, n_kv, q_len, p.causal != 0};
  // Heavy tiles (last rows, which see the most keys when causal) get the low block ids: scheduled first.
  const int64_t row0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kBM;
  if (row0 >= limit_of.total_rows) return;
  const int count = static_cast<int>(min(static_cast<int64_t>(kBM), limit_of.total_rows - row0));
  const int block_limit = limit_of(row0 + count - 1);
  const int n_tiles = (block_limit + kBN - 1) / kBN;
  const int slot = p.seq_slot[seq];
  const T* Q = static_cast<const T*>(p.q);
  const T* K = static_cast<const T*>(p.kv.k);
  const T* V = static_cast<const T*>(p.kv.v);

  // Keys [key0, key0 + kBN) into a stage; keys past the block's limit and components past head_dim are
  // zero-filled (a masked key's probability is 0, and 0 * garbage could be NaN).
  auto load_kv = [&](int stage, int key0) {
    for (int c = threadIdx.x; c < kBN * kChunks; c += Tr::kThreads) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const bool valid = key0 + r < block_limit && col < p.head_dim;
      const int64_t off = valid ? kv_offset(p.kv, slot, key0 + r, kv_head) + col : 0;
      const uint32_t o = tile_offset(r, col, kBN);
      cp_async_16(smem + k_tile(stage) + o, K + off, valid);
      cp_async_16(smem + v_tile(stage) + o, V + off, valid);
    }
  };
  // Q rows, then the first K/V tile, in one cp.async group.
  for (int c = threadIdx.x; c < kBM * kChunks; c += Tr::kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool valid = r < count && col < p.head_dim;
    const int64_t off = valid ? row_offset(row0 + r, q0, group, kv_head, p.q_token_stride, p.q_head_stride) + col : 0;
    cp_async_16(smem + tile_offset(r, col, kBM), Q + off, valid);
  }
  if (n_tiles > 0) load_kv(0, 0);
  cp_async_commit();

  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t wrow0 = row0 + wg * 64;  // the warpgroup's first row
  const int64_t wleft = row0 + count - wrow0;
  const int wcount = wleft <= 0 ? 0 : wleft >= 64 ? 64 : static_cast<int>(wleft);
  // Every thread of a warpgroup takes the same branches around its MMAs: they are issued by all 128.
  const int wg_lo = wcount > 0 ? limit_of(wrow0) : 0;               // fewest keys a row of the warpgroup sees
  const int wg_hi = wcount > 0 ? limit_of(wrow0 + wcount - 1) : 0;  // most keys
  const int limit[2] = {limit_of(wrow0 + warp * 16 + g), limit_of(wrow0 + warp * 16 + g + 8)};

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int i = 0; i < max(n_tiles, 1); ++i) {
    const int stage = i & 1;
    if (i + 1 < n_tiles) {
      load_kv(stage ^ 1, (i + 1) * kBN);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    fence_async_smem();
    __syncthreads();
    const int key0 = i * kBN;
    if (i < n_tiles && key0 < wg_hi) {
      // S = Q K^T over the head dim, 16 at a time: within a 128-byte panel the next 16 columns start 32
      // bytes on (the swizzle is applied by the hardware on the address bits).
      float s[kBN / 2];
#pragma unroll
      for (int j = 0; j < kBN / 2; ++j) s[j] = 0.0f;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t panel = kk >> 2, step = (kk & 3) * 32;
        const uint64_t da = smem_desc(sq + panel * kBM * 128 + wg * 64 * 128 + step, 16, 1024);
        const uint64_t db = smem_desc(base + k_tile(stage) + panel * kBN * 128 + step, 16, 1024);
        wgmma_ss<T, kBN>(s, da, db, kk > 0);
      }
      wgmma_commit();
      wgmma_wait<0>();

      // Online softmax in the exp2 domain; s[4j + e]: row g (e < 2) or g + 8, key key0 + 8j + 2t + (e & 1).
      const bool masked = key0 + kBN > wg_lo;
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float v = s[4 * j + e] * p.scale_log2;
          if (masked && key0 + 8 * j + 2 * t + (e & 1) >= limit[e >> 1]) v = -INFINITY;
          s[4 * j + e] = v;
          mx[e >> 1] = fmaxf(mx[e >> 1], v);
        }
      float base_m[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(m[r], mx[r]);
        base_m[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet stays all-zero
        const float alpha = exp2_approx(m[r] - base_m[r]);
        m[r] = m_new;
        l[r] *= alpha;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          o[4 * j + 2 * r] *= alpha;
          o[4 * j + 2 * r + 1] *= alpha;
        }
      }
      // P as A fragments: keys 16kk.. of rows g and g + 8 are s[8kk .. 8kk + 7].
      uint32_t pa[kBN / 16][4];
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        float pe[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          pe[e] = exp2_approx(s[8 * kk + e] - base_m[(e >> 1) & 1]);
          l[(e >> 1) & 1] += pe[e];
        }
        pa[kk][0] = pack2<T>(pe[0], pe[1]);
        pa[kk][1] = pack2<T>(pe[2], pe[3]);
        pa[kk][2] = pack2<T>(pe[4], pe[5]);
        pa[kk][3] = pack2<T>(pe[6], pe[7]);
      }

      // O += P V, 16 keys at a time: the next 16 keys start 16 rows (2048 bytes) on.
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        const uint64_t dv = smem_desc(base + v_tile(stage) + kk * 16 * 128, kBN * 128, 1024);
        wgmma_rs<T, D>(o, pa[kk], dv, 1);
      }
      wgmma_commit();
      wgmma_wait<0>();
    }
    __syncthreads();  // the stage just read is the next prefetch's target
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

template <typename T, int D>
cudaError_t launch_typed(const Params& p, cudaStream_t stream) {
  using Tr = Sm90PrefillTraits<D>;
  const int64_t tiles = (static_cast<int64_t>(p.max_q_len) * p.group + Tr::kBM - 1) / Tr::kBM;
  if (tiles > 0x7fffffff || p.num_seqs > 65535 || p.num_kv_heads > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.num_kv_heads),
                  static_cast<unsigned>(p.num_seqs));
  prefill_sm90_kernel<T, D><<<grid, Tr::kThreads, Tr::kSmem, stream>>>(p);
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
  return cudaFuncSetAttribute(prefill_sm90_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(Sm90PrefillTraits<D>::kSmem));
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
