// The tensor-core decode-step product (gemv.h), for bf16/fp16 weights and 1 to 16 tokens.
//
// A warp computes a 16-row tile of W x with mma.m16n8k16: the weights are the A operand, the tokens the n
// dimension (one n-tile of 8, two for 9 to 16; token columns past the last are computed on a repeated
// token and dropped). The weights go from global memory straight into the A fragments, with no shared
// memory and no shuffles, because the k order inside a product is free: permuted the same way for A and
// B, the sum is the same. Lane (g, t) = (lane / 4, lane % 4) loads 16 bytes, k 8t..8t+7 of a 32-wide chunk,
// of row g and of row g + 8, and the same 16 bytes of x for token g; words 0 and 1 are the k slots
// {2t, 2t+1} and {2t+8, 2t+9} of one mma, words 2 and 3 those of a second. One 16-byte load per row per
// lane so feeds two k16 mmas, and the instruction count per weight byte hardly grows with the tokens (the
// CUDA-core kernel's does: gemv.cu).
//
// A 4096-row matrix is only 256 tiles for 132 SMs, too few warps to keep enough bytes in flight, so a
// block splits K over its warps (each a contiguous slice of the 32-wide chunks) and warp 0 sums their
// fragments through shared memory before the epilogue; the split is chosen from the shape and the
// kernel's occupancy (plan below). Each lane keeps 8 weight loads of 16 bytes in flight (4 chunks of one
// tile, or 2 of two), the x loads of the same chunks beside them.
//
// Epilogues work on the C fragment: lane (g, t) holds rows g and g + 8 at tokens 2t and 2t + 1. RoPE pairs
// rows 2i and 2i + 1, which sit in lanes 4 apart: one shuffle gives the even lane token 2t of both rows and
// the odd lane token 2t + 1. Swiglu computes the same 16 rows of W1 and W3 as two tiles of one warp.
//
// Odd shapes: rows past the end read a valid row and are not written; columns are read with 16-byte loads
// where rows start on 16 bytes (cols a multiple of 8) and the whole chunk is inside the row, element by
// element with zeros past the end otherwise.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "cuda_check.h"
#include "dtype_convert.cuh"
#include "error.h"
#include "gemv.h"
#include "mma.cuh"
#include "pdl.cuh"

namespace llm::cuda {
namespace {

constexpr int kChunk = 32;         // columns a warp takes per step: 8 for each of the 4 lanes of a row
constexpr int kMaxWarps = 16;      // warps per block, each a slice of K
constexpr int kLoadsInFlight = 8;  // 16-byte weight loads in flight per lane
// Warps per SM that keep the copy bandwidth busy with kLoadsInFlight loads each (64 KiB in flight per SM;
// Little's law at ~4 TB/s and ~1 us of loaded latency asks for ~30 KiB): the plan aims the grid at this.
constexpr int kSaturatingWarpsPerSm = 16;

// 8 elements of T at row[k0..k0+8), those at or past `cols` as zeros, by 2-byte loads (any alignment):
// weights through the read-only path, activations (written by the kernel before) with coherent loads.
template <bool kActivation, typename T>
__device__ __forceinline__ uint4 load8_checked(const T* row, int k0, int cols) {
  const auto* s = reinterpret_cast<const unsigned short*>(row);
  auto load = [&](int k) -> uint32_t {
    if (k >= cols) return 0u;
    if constexpr (kActivation)
      return load_activation2(s + k);
    else
      return __ldg(s + k);
  };
  uint32_t w[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int k = k0 + 2 * j;
    w[j] = load(k) | load(k + 1) << 16;
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// The sum of v over the 8 lanes of this lane's quad column (lanes t, t + 4, ..., t + 28, which hold the same
// tokens in every fragment), in the same order every run.
__device__ __forceinline__ float quad_column_sum(float v) {
#pragma unroll
  for (int o = 4; o < 32; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// acc += the chunk's products: w[m][0], w[m][1] the lane's 16 bytes of rows g and g + 8 of tile m, x[j] its
// 16 bytes of token 8j + g (the k permutation in the file comment).
template <typename T, int MT, int NT>
__device__ __forceinline__ void mma_chunk(const uint4 (&w)[MT][2], const uint4 (&x)[NT], float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      mma_16816<T>(acc[m][j], w[m][0].x, w[m][1].x, w[m][0].y, w[m][1].y, x[j].x, x[j].y);
      mma_16816<T>(acc[m][j], w[m][0].z, w[m][1].z, w[m][0].w, w[m][1].w, x[j].z, x[j].w);
    }
}

// Row i (0..15) of tile m of this block: its first element. Past the end: the last row (read, not used).
// (Matrices selected, not indexed: a run-time index into the parameter array would copy it to local memory.)
template <typename T, GemvEpilogue E, int MT>
__device__ __forceinline__ const T* tile_row(const GemvArgs& p, int m, int i) {
  if constexpr (E == GemvEpilogue::Swiglu) {  // tile 0: W1, tile 1: W3, the same 16 rows
    const int r = min(static_cast<int>(blockIdx.x) * 16 + i, p.rows[0] - 1);
    return static_cast<const T*>(m == 0 ? p.w[0] : p.w[1]) + static_cast<int64_t>(r) * p.cols;
  } else if constexpr (E == GemvEpilogue::QkvRope) {
    int r = min((static_cast<int>(blockIdx.x) * MT + m) * 16 + i, p.rows[0] + p.rows[1] + p.rows[2] - 1);
    const void* w = p.w[0];
    if (r >= p.rows[0]) {
      r -= p.rows[0], w = p.w[1];
      if (r >= p.rows[1]) r -= p.rows[1], w = p.w[2];
    }
    return static_cast<const T*>(w) + static_cast<int64_t>(r) * p.cols;
  } else {
    const int r = min((static_cast<int>(blockIdx.x) * MT + m) * 16 + i, p.rows[0] - 1);
    return static_cast<const T*>(p.w[0]) + static_cast<int64_t>(r) * p.cols;
  }
}

// Block: MT 16-row tiles (Swiglu: MT = 2, the tile of W1 and of W3), blockDim.x / 32 warps, warp w the
// w-th slice of the `full_chunks` 32-wide chunks that are read with 16-byte loads; the chunks after them
// (a tail, or every chunk of rows that do not start on 16 bytes) element by element. Dynamic shared
// memory: (warps - 1) * MT * NT * 4 * 32 floats.
template <typename T, int MT, int NT, GemvEpilogue E>
__global__ void __launch_bounds__(kMaxWarps * 32) gemv_tc_kernel(const GemvArgs p, int full_chunks) {
  allow_next_kernel();
  constexpr int U = kLoadsInFlight / (2 * MT);  // chunks in flight per lane
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int cols = p.cols, tokens = p.tokens;

  const T* wrow[MT][2];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    wrow[m][0] = tile_row<T, E, MT>(p, m, g);
    wrow[m][1] = tile_row<T, E, MT>(p, m, g + 8);
  }
  const T* xrow[NT];  // token 8j + g; past the last token, the last (its products are dropped)
#pragma unroll
  for (int j = 0; j < NT; ++j)
    xrow[j] = static_cast<const T*>(p.x) + static_cast<int64_t>(min(8 * j + g, tokens - 1)) * cols;

  float acc[MT][NT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[m][j][e] = 0.0f;

  // This warp's chunks [c0, c0 + n), U of them in flight: chunk i is consumed from stage i % U, which
  // then loads chunk i + U.
  const int c0 = static_cast<int>(static_cast<int64_t>(full_chunks) * warp / warps);
  const int n = static_cast<int>(static_cast<int64_t>(full_chunks) * (warp + 1) / warps) - c0;
  uint4 wv[U][MT][2], xv[U][NT];
  auto load_w = [&](int u, int c) {
    const int off = c * kChunk + 8 * t;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      wv[u][m][0] = load_stream(wrow[m][0] + off);
      wv[u][m][1] = load_stream(wrow[m][1] + off);
    }
  };
  auto load_x = [&](int u, int c) {
    const int off = c * kChunk + 8 * t;
#pragma unroll
    for (int j = 0; j < NT; ++j) xv[u][j] = load_activation16(xrow[j] + off);
  };
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (u < n) load_w(u, c0 + u);
  // The first weights are on their way; x (and the outputs) may still be in the previous kernel's hands:
  // x is read with coherent loads only (load_activation16, mma.cuh), which stay below the wait.
  wait_for_previous_kernel();
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (u < n) load_x(u, c0 + u);
  // The RMSNorm prepared by the product before (norm_parts, [token][norm_parts_count]): warp 0 sums this
  // lane's share of its tokens' partial sums (parts g, g + 8, ... of token 8j + 2t + e) while its first
  // chunks are on their way; the epilogue adds the shares over the lanes of a quad column.
  float norm_ss[NT][2];
#pragma unroll
  for (int j = 0; j < NT; ++j) norm_ss[j][0] = norm_ss[j][1] = 0.0f;
  if (p.norm_parts && warp == 0) {
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tok = 8 * j + 2 * t + e;
        if (tok < tokens) {
          const float* part = p.norm_parts + static_cast<int64_t>(tok) * p.norm_parts_count;
          float s = 0.0f;
#pragma unroll 4
          for (int k = g; k < p.norm_parts_count; k += 8) s += part[k];
          norm_ss[j][e] = s;
        }
      }
  }
  // AddF32 preparing the next norm (next_x): warp 0's rows' gains, also beside the first chunks.
  const bool next = E == GemvEpilogue::AddF32 && p.next_x != nullptr;
  float next_gain[MT][2];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    next_gain[m][0] = next_gain[m][1] = 0.0f;
    if (next && warp == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = (static_cast<int>(blockIdx.x) * MT + m) * 16 + g + 8 * h;
        if (r < p.rows[0]) next_gain[m][h] = p.next_gain[r];
      }
    }
  }
  int i = 0;
  for (; i + 2 * U <= n; i += U) {  // steady state: no bounds
#pragma unroll
    for (int u = 0; u < U; ++u) {
      mma_chunk<T, MT, NT>(wv[u], xv[u], acc);
      load_w(u, c0 + i + U + u);
      load_x(u, c0 + i + U + u);
    }
  }
  for (; i < n; i += U) {  // the last chunks (fewer than 2U)
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (i + u < n) {
        mma_chunk<T, MT, NT>(wv[u], xv[u], acc);
        if (i + u + U < n) {
          load_w(u, c0 + i + U + u);
          load_x(u, c0 + i + U + u);
        }
      }
  }
  // The rest, element by element; the last warp first (warp 0 has the epilogue ahead of it).
  const int all_chunks = (cols + kChunk - 1) / kChunk;
  for (int c = full_chunks + (warps - 1 - warp); c < all_chunks; c += warps) {
    const int k0 = c * kChunk + 8 * t;
    uint4 w[MT][2], x[NT];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      w[m][0] = load8_checked<false>(wrow[m][0], k0, cols);
      w[m][1] = load8_checked<false>(wrow[m][1], k0, cols);
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) x[j] = load8_checked<true>(xrow[j], k0, cols);
    mma_chunk<T, MT, NT>(w, x, acc);
  }

  // Split K: warp 0 sums the other warps' fragments (element e of fragment v of warp w at
  // partial[((w - 1) * V + v) * 32 + lane]: a lane's floats 32 apart, no bank conflicts).
  if (warps > 1) {
    extern __shared__ float partial[];
    constexpr int V = MT * NT * 4;
    if (warp > 0) {
      float* mine = partial + (warp - 1) * V * 32 + lane;
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) mine[((m * NT + j) * 4 + e) * 32] = acc[m][j][e];
    }
    __syncthreads();
    if (warp > 0) return;
    for (int w = 1; w < warps; ++w) {
      const float* theirs = partial + (w - 1) * V * 32 + lane;
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[m][j][e] += theirs[((m * NT + j) * 4 + e) * 32];
    }
  }

  // Epilogue, warp 0: acc[m][j][2h + e] is row g + 8h of tile m at token 8j + 2t + e.
  if (p.norm_parts) {  // each token's totals by 1 / rms (its sum of squares: the shares of lanes g = 0..7)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float inv = rsqrtf(quad_column_sum(norm_ss[j][e]) / cols + p.norm_eps);
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[m][j][e] *= inv, acc[m][j][2 + e] *= inv;
      }
  }
  if constexpr (E == GemvEpilogue::Swiglu) {
    const int rows = p.rows[0];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int r = static_cast<int>(blockIdx.x) * 16 + g + 8 * h, tok = 8 * j + 2 * t + e;
          if (r < rows && tok < tokens) {
            const float gate = acc[0][j][2 * h + e];
            static_cast<T*>(p.out)[static_cast<int64_t>(tok) * rows + r] =
                from_f32<T>(gate / (1.0f + __expf(-gate)) * acc[1][j][2 * h + e]);
          }
        }
  } else if constexpr (E == GemvEpilogue::QkvRope) {
    // Rows (2i, 2i + 1) of the q | k | v row space sit in lanes g, g + 1 (4 apart): the even lane takes
    // token 2t of both, the odd lane token 2t + 1. Every section has an even number of rows, so a pair
    // never straddles two.
    const int odd = g & 1;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float c0 = acc[m][j][2 * h], c1 = acc[m][j][2 * h + 1];
          const float other = __shfl_xor_sync(0xffffffffu, odd ? c0 : c1, 4);
          float a = odd ? other : c0, b = odd ? c1 : other;
          const int tok = 8 * j + 2 * t + odd;
          int r = (static_cast<int>(blockIdx.x) * MT + m) * 16 + g - odd + 8 * h, sec = 0;
          if (r >= p.rows[0]) {
            r -= p.rows[0], sec = 1;
            if (r >= p.rows[1]) r -= p.rows[1], sec = 2;
          }
          if (tok < tokens && (sec < 2 || r < p.rows[2])) {
            if (sec < 2) {  // RoPE on the pair (llama2.c's adjacent layout)
              const float* cs = p.cos_sin + static_cast<int64_t>(p.pos[tok]) * p.head_dim + (r % p.head_dim);
              const float cv = cs[0], sv = cs[1];
              const float ra = a * cv - b * sv, rb = a * sv + b * cv;
              a = ra, b = rb;
            }
            T* dst;
            if (sec == 0) {
              dst = static_cast<T*>(p.out) + static_cast<int64_t>(tok) * p.rows[0] + r;
            } else {
              const int64_t row =
                  static_cast<int64_t>(p.slot[tok]) * p.seq_stride + static_cast<int64_t>(p.pos[tok]) * p.rows[1];
              dst = static_cast<T*>(sec == 1 ? p.k_cache : p.v_cache) + row + r;
            }
            dst[0] = from_f32<T>(a);
            dst[1] = from_f32<T>(b);
          }
        }
  } else {
    const int rows = p.rows[0];
    float sq[NT][2];  // (next) each token's sum of squares of y over this lane's rows
#pragma unroll
    for (int j = 0; j < NT; ++j) sq[j][0] = sq[j][1] = 0.0f;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int r = (static_cast<int>(blockIdx.x) * MT + m) * 16 + g + 8 * h, tok = 8 * j + 2 * t + e;
            if (r < rows && tok < tokens) {
              float* y = static_cast<float*>(p.out) + static_cast<int64_t>(tok) * rows + r;
              if constexpr (E == GemvEpilogue::AddF32) {
                const float v = *y + acc[m][j][2 * h + e];
                *y = v;
                if (next) {
                  static_cast<T*>(p.next_x)[static_cast<int64_t>(tok) * rows + r] = from_f32<T>(v * next_gain[m][h]);
                  sq[j][e] = fmaf(v, v, sq[j][e]);
                }
              } else {
                *y = acc[m][j][2 * h + e];
              }
            }
          }
    if (next) {  // the block's partial sum of each token, [token][blocks], added over the lanes g = 0..7
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float s = quad_column_sum(sq[j][e]);
          const int tok = 8 * j + 2 * t + e;
          if (g == 0 && tok < tokens) p.next_parts[static_cast<int64_t>(tok) * gridDim.x + blockIdx.x] = s;
        }
    }
  }
}

using Kernel = void (*)(GemvArgs, int);

template <typename T, int MT, int NT>
Kernel pick_epilogue(GemvEpilogue e) {
  switch (e) {
    case GemvEpilogue::QkvRope: return gemv_tc_kernel<T, MT, NT, GemvEpilogue::QkvRope>;
    case GemvEpilogue::AddF32: return gemv_tc_kernel<T, MT, NT, GemvEpilogue::AddF32>;
    case GemvEpilogue::StoreF32: return gemv_tc_kernel<T, MT, NT, GemvEpilogue::StoreF32>;
    default: return nullptr;  // Swiglu: pick()
  }
}

// The kernel for `e`, `row_tiles` 16-row tiles a block and `n_tiles` 8-token tiles.
template <typename T>
Kernel pick(GemvEpilogue e, int row_tiles, int n_tiles) {
  if (e == GemvEpilogue::Swiglu)
    return n_tiles == 1 ? gemv_tc_kernel<T, 2, 1, GemvEpilogue::Swiglu> : gemv_tc_kernel<T, 2, 2, GemvEpilogue::Swiglu>;
  if (row_tiles == 1) return n_tiles == 1 ? pick_epilogue<T, 1, 1>(e) : pick_epilogue<T, 1, 2>(e);
  return n_tiles == 1 ? pick_epilogue<T, 2, 1>(e) : pick_epilogue<T, 2, 2>(e);
}

Kernel pick(DType type, GemvEpilogue e, int row_tiles, int n_tiles) {
  return type == DType::BF16 ? pick<__nv_bfloat16>(e, row_tiles, n_tiles) : pick<__half>(e, row_tiles, n_tiles);
}

// Tiles a block holds in registers (Swiglu: W1's and W3's).
int register_tiles(GemvEpilogue e, int row_tiles) { return e == GemvEpilogue::Swiglu ? 2 : row_tiles; }

size_t shared_bytes(GemvEpilogue e, int row_tiles, int n_tiles, int warps) {
  return static_cast<size_t>(warps - 1) * register_tiles(e, row_tiles) * n_tiles * 4 * 32 * sizeof(float);
}

struct DeviceFacts {
  int sms = 0;
  std::map<std::pair<Kernel, int>, int> blocks_per_sm;  // (kernel, warps) -> resident blocks per SM
};

// Resident blocks per SM of `kernel` with `warps` warps on the current device (asked once, then cached:
// the plan runs at every eager launch).
int resident_blocks(Kernel kernel, int warps, size_t shared, int* sms) {
  static std::mutex mutex;
  static std::map<int, DeviceFacts> devices;
  int device = 0;
  LLM_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  DeviceFacts& d = devices[device];
  if (d.sms == 0) LLM_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device));
  *sms = d.sms;
  const auto key = std::make_pair(kernel, warps);
  auto it = d.blocks_per_sm.find(key);
  if (it != d.blocks_per_sm.end()) return it->second;
  int blocks = 0;
  LLM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, warps * 32, shared));
  d.blocks_per_sm.emplace(key, blocks);
  return blocks;
}

int row_blocks(GemvEpilogue e, const GemvArgs& p, int row_tiles) {
  if (e == GemvEpilogue::Swiglu) return (p.rows[0] + 15) / 16;
  const int rows = e == GemvEpilogue::QkvRope ? p.rows[0] + p.rows[1] + p.rows[2] : p.rows[0];
  const int tiles = (rows + 15) / 16;
  return (tiles + row_tiles - 1) / row_tiles;
}

// 32-wide chunks read with 16-byte loads: all whole ones where every row starts on 16 bytes, else none.
int full_chunks(const GemvArgs& p) {
  bool aligned = p.cols % 8 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0;
  for (const void* w : p.w) aligned = aligned && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  return aligned ? p.cols / kChunk : 0;
}

// Warps per block: the split whose grid best keeps the device's bandwidth busy. Per candidate, the grid's
// resident warps per SM against kSaturatingWarpsPerSm (a grid too small to fill the device) times the
// share of its last wave that is full (a grid of 1.1 waves idles most SMs in its second); the smallest
// split within 2% of the best (fewer partial sums, longer streams per warp). Each warp gets at least the
// chunks it keeps in flight.
int choose_warps(DType type, GemvEpilogue e, int row_tiles, int n_tiles, int blocks, int chunks) {
  const int in_flight = kLoadsInFlight / (2 * register_tiles(e, row_tiles));
  int best = 1;
  double best_score = -1;
  for (int warps = 1; warps <= kMaxWarps; warps *= 2) {
    if (warps > 1 && warps * in_flight > chunks) break;
    int sms = 0;
    const int per_sm =
        resident_blocks(pick(type, e, row_tiles, n_tiles), warps, shared_bytes(e, row_tiles, n_tiles, warps), &sms);
    if (per_sm == 0) continue;
    const double slots = static_cast<double>(sms) * per_sm, waves = blocks / slots;
    const double tail = waves <= 1 ? 1.0 : waves / std::ceil(waves);
    const double warps_per_sm = std::min(static_cast<double>(blocks), slots) * warps / sms;
    const double score = tail * std::min(1.0, warps_per_sm / kSaturatingWarpsPerSm);
    if (score > best_score * 1.02) best = warps, best_score = score;
  }
  return best;
}

GemvTuning resolve(GemvEpilogue e, const GemvArgs& p, DType type, const GemvTuning& tuning) {
  const int n_tiles = p.tokens > 8 ? 2 : 1;
  GemvTuning r;
  // Two tiles a warp halve the x bytes per weight byte (x is re-read per tile, from L1 or L2): worth it
  // when x is 9 to 16 tokens.
  r.row_tiles = e == GemvEpilogue::Swiglu ? 1 : tuning.row_tiles ? tuning.row_tiles : n_tiles;
  if (r.row_tiles != 1 && r.row_tiles != 2) fail("gemv: row_tiles {}: expected 1 or 2", tuning.row_tiles);
  r.warps = tuning.warps;
  if (r.warps == 0)
    r.warps =
        choose_warps(type, e, r.row_tiles, n_tiles, row_blocks(e, p, r.row_tiles), (p.cols + kChunk - 1) / kChunk);
  if (r.warps < 1 || r.warps > kMaxWarps || (r.warps & (r.warps - 1)) != 0)
    fail("gemv: {} warps a block: expected 1, 2, 4, 8 or 16", r.warps);
  return r;
}

}  // namespace

GemvTuning gemv_tensor_core_plan(GemvEpilogue epilogue, const GemvArgs& args, DType type, const GemvTuning& tuning) {
  return resolve(epilogue, args, type, tuning);
}

int gemv_tensor_core(GemvEpilogue epilogue, const GemvArgs& args, DType type, cudaStream_t stream,
                     const GemvTuning& tuning) {
  if (type != DType::BF16 && type != DType::F16) fail("gemv: the tensor-core kernel takes bf16 or fp16 weights");
  const GemvTuning r = resolve(epilogue, args, type, tuning);
  const int n_tiles = args.tokens > 8 ? 2 : 1;
  const int blocks = row_blocks(epilogue, args, r.row_tiles);
  launch_pdl(pick(type, epilogue, r.row_tiles, n_tiles), dim3(blocks), dim3(r.warps * 32),
             shared_bytes(epilogue, r.row_tiles, n_tiles, r.warps), stream, args, full_chunks(args));
  LLM_CUDA_CHECK_LAUNCH();
  return blocks;
}

}  // namespace llm::cuda
