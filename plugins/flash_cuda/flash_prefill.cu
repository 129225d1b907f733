// Prefill: FlashAttention-2's forward over the rows of one (sequence, kv head). A block of kWarps warps
// holds kBM rows (16 per warp) and streams the keys in tiles of kBN through double-buffered shared
// memory (cp.async: the next tile loads while this one is multiplied); each warp runs the online
// softmax on its own rows. Causal blocks stop at their last row's limit, and a warp skips tiles its
// rows cannot see; only tiles that cross a row's limit pay for the mask.
#include "flash_params.h"
#include "kernel_dispatch.cuh"
#include "prefill_rows.cuh"
#include "warp_attention.cuh"

namespace flash_cuda {
namespace {

template <int D>
struct PrefillTraits {
  // Four warps of 32 rows each (two m tiles: every K/V fragment read from shared memory feeds two
  // products), 64-key tiles; head dim 256 keeps one m tile and 32-key tiles to stay within the registers.
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kMT = D <= 128 ? 2 : 1;  // 16-row m tiles per warp
  static constexpr int kWarpRows = 16 * kMT;
  static constexpr int kBM = kWarpRows * kWarps;  // rows per block
  static constexpr int kBN = D <= 128 ? 64 : 32;  // keys per tile
  static constexpr int kStride = Smem<D>::kStride;
  template <typename T>
  static constexpr size_t smem_bytes() {
    return static_cast<size_t>(kBM + 4 * kBN) * kStride * sizeof(T);
  }
};

template <typename T, int D>
__global__ void __launch_bounds__(PrefillTraits<D>::kThreads) prefill_kernel(const Params p) {
  using Tr = PrefillTraits<D>;
  constexpr int kStride = Tr::kStride, kBM = Tr::kBM, kBN = Tr::kBN;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sq = reinterpret_cast<T*>(smem_raw);
  T* sk = sq + kBM * kStride;  // [2][kBN][kStride]
  T* sv = sk + 2 * kBN * kStride;

  const int seq = blockIdx.z, kv_head = blockIdx.y, group = p.group;
  const BlockRows rows = block_rows(p, seq, blockIdx.x, gridDim.x, kBM);
  if (rows.count == 0) return;
  const RowLimits& limit_of = rows.limit_of;
  const int q0 = rows.q0, count = rows.count, block_limit = rows.block_limit, slot = rows.slot;
  const int64_t row0 = rows.row0;
  const int n_tiles = (block_limit + kBN - 1) / kBN;
  const T* Q = static_cast<const T*>(p.q);
  T* out = static_cast<T*>(p.out);

  // Q rows, then the first K/V tile, in one cp.async group.
  constexpr int kChunks = D / 8;
  if constexpr (Tr::kThreads % kChunks == 0) {  // a thread keeps its column: its rows are walked (RowWalker)
    constexpr int kRowStep = Tr::kThreads / kChunks;
    const int lr = threadIdx.x / kChunks, col = (threadIdx.x % kChunks) * 8;
    RowWalker q(row0 + lr, q0, group, kv_head, kRowStep);
    for (int r = lr; r < kBM; r += kRowStep, q.next()) {
      const bool valid = r < count && col < p.head_dim;
      const int64_t off = valid ? q.offset(p.q_token_stride, p.q_head_stride) + col : 0;
      cp_async_16(sq + r * kStride + col, Q + off, valid);
    }
  } else {
    for (int c = threadIdx.x; c < kBM * kChunks; c += Tr::kThreads) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const bool valid = r < count && col < p.head_dim;
      const int64_t off = valid ? row_offset(row0 + r, q0, group, kv_head, p.q_token_stride, p.q_head_stride) + col : 0;
      cp_async_16(sq + r * kStride + col, Q + off, valid);
    }
  }
  if (n_tiles > 0) load_kv_tile<T, D, kBN, Tr::kThreads>(sk, sv, p.kv, slot, kv_head, 0, block_limit, p.head_dim);
  cp_async_commit();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  constexpr int kMT = Tr::kMT, kWarpRows = Tr::kWarpRows;
  const int64_t wrow0 = row0 + warp * kWarpRows;
  const int64_t wleft = row0 + count - wrow0;  // rows of the block from this warp on
  const int wcount = wleft <= 0 ? 0 : wleft >= kWarpRows ? kWarpRows : static_cast<int>(wleft);
  const int warp_lo = wcount > 0 ? limit_of(wrow0) : 0;               // fewest keys a row of the warp sees
  const int warp_hi = wcount > 0 ? limit_of(wrow0 + wcount - 1) : 0;  // most keys
  int limit[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    limit[mt][0] = limit_of(wrow0 + mt * 16 + g);
    limit[mt][1] = limit_of(wrow0 + mt * 16 + g + 8);
  }
  WarpAttention<T, D, kMT> w;
  w.init();
  const T* wq = sq + warp * kWarpRows * kStride;

  for (int i = 0; i < max(n_tiles, 1); ++i) {
    if (i + 1 < n_tiles) {
      load_kv_tile<T, D, kBN, Tr::kThreads>(sk + ((i + 1) & 1) * kBN * kStride, sv + ((i + 1) & 1) * kBN * kStride,
                                            p.kv, slot, kv_head, (i + 1) * kBN, block_limit, p.head_dim);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int key0 = i * kBN;
    if (i < n_tiles && key0 < warp_hi)
      w.template step<kBN>(wq, sk + (i & 1) * kBN * kStride, sv + (i & 1) * kBN * kStride, key0, limit,
                           key0 + kBN > warp_lo, p.scale_log2);
    __syncthreads();  // the buffer just read is the next prefetch's target
  }
  w.finish();

#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = warp * kWarpRows + mt * 16 + g + 8 * i;
      if (r >= count) continue;
      const int64_t row = row0 + r;
      T* dst = out + row_offset(row, q0, group, kv_head, p.out_token_stride, p.out_head_stride);
      const float inv = w.l[mt][i] > 0.0f ? 1.0f / w.l[mt][i] : 0.0f;
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        if (8 * j < p.head_dim)
          *reinterpret_cast<uint32_t*>(dst + 8 * j + 2 * t) =
              pack2<T>(w.o[mt][j][2 * i] * inv, w.o[mt][j][2 * i + 1] * inv);
    }
}

template <typename T, int D>
cudaError_t launch_typed(const Params& p, cudaStream_t stream) {
  using Tr = PrefillTraits<D>;
  constexpr size_t smem = Tr::template smem_bytes<T>();
  const int64_t tiles = (static_cast<int64_t>(p.max_q_len) * p.group + Tr::kBM - 1) / Tr::kBM;
  if (tiles > 0x7fffffff || p.num_seqs > 65535 || p.num_kv_heads > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.num_kv_heads),
                  static_cast<unsigned>(p.num_seqs));
  prefill_kernel<T, D><<<grid, Tr::kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

// Lets the kernel use more than 48 KiB of dynamic shared memory (per device: called at context creation,
// never inside a call, so that launches stay capturable); fails when the device has no image of it.
template <typename T, int D>
cudaError_t configure_typed() {
  return cudaFuncSetAttribute(prefill_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(PrefillTraits<D>::template smem_bytes<T>()));
}

}  // namespace

int kernel_dim(int head_dim) {
  if (head_dim < 1 || head_dim % 8 != 0) return 0;
  for (int d : kKernelDims)
    if (head_dim <= d) return d;
  return 0;
}

cudaError_t launch_prefill(const Params& p, cudaStream_t stream) {
  if (p.sm90_prefill) return launch_prefill_sm90(p, stream);
  return with_any_kernel(p.fp16, p.head_dim,
                         [&](auto t, auto d) { return launch_typed<decltype(t), decltype(d)::value>(p, stream); });
}

cudaError_t configure_prefill(bool fp16, int head_dim) {
  return with_any_kernel(fp16, head_dim,
                         [](auto t, auto d) { return configure_typed<decltype(t), decltype(d)::value>(); });
}

int min_built_arch() {
#ifdef __CUDA_ARCH_LIST__
  constexpr int archs[] = {__CUDA_ARCH_LIST__};
  int lowest = archs[0];
  for (int a : archs) lowest = lowest < a ? lowest : a;
  return lowest / 10;
#else
  return 0;
#endif
}

}  // namespace flash_cuda
