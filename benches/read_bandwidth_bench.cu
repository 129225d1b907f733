// read_bandwidth_bench: how fast this GPU reads memory that is not in its L2, by the ways a decode-step
// product can read its weights. The floors the other benches print are weight bytes over the copy
// bandwidth (cudaMemcpy, bytes read + written); a kernel that only reads can go above that figure, and
// how far depends on how it reads. Each row streams a buffer many times the L2 once and prints TB/s:
//   lanes:  every warp reads U x 512 contiguous bytes a batch (16 bytes a lane), persistent grid;
//   rows:   the CUDA-core product's pattern (gemv.cu): a warp owns two rows, U 512-byte pieces of each
//           in flight a batch, a block of 8 warps per 16 rows, one block per 16 rows (not persistent);
//   bulk:   the copy engine (cp.async.bulk) into a ring of shared-memory stages, one thread issuing.
// Load kinds: nc (ld.global.nc.L1::no_allocate, what gemv uses), plain (ld.global.L1::no_allocate),
// nc+ef (nc with an L2 evict_first policy).
//
//   read_bandwidth_bench [--mib 2048] [--rounds 5]
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <string>

#include "best_event_time.h"
#include "copy_bandwidth.h"
#include "cuda_check.h"

namespace {

enum Load { kNc = 0, kPlain = 1, kNcEvictFirst = 2 };
const char* load_name(int l) { return l == kNc ? "nc" : l == kPlain ? "plain" : "nc+ef"; }

template <int L>
__device__ __forceinline__ uint4 load16(const uint4* p, uint64_t policy) {
  uint4 v;
  if constexpr (L == kNc) {
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  } else if constexpr (L == kPlain) {
    asm volatile("ld.global.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  } else {
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "l"(policy));
  }
  return v;
}

__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

// Folds what was read into one word that is written only if it takes an impossible value, so no load
// can be dropped.
__device__ __forceinline__ void sink_word(uint32_t acc, uint32_t* sink) {
  if (acc == 0x9e3779b9u) sink[0] = acc;
}
__device__ __forceinline__ uint32_t fold(const uint4& v) { return v.x ^ v.y ^ v.z ^ v.w; }

template <int U, int L>
__global__ void lanes_kernel(const uint4* data, size_t chunks, uint32_t* sink) {
  const uint64_t policy = L == kNcEvictFirst ? evict_first_policy() : 0;
  const int lane = threadIdx.x & 31;
  const size_t warp = (static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const size_t warps = (static_cast<size_t>(gridDim.x) * blockDim.x) >> 5;
  uint32_t acc = 0;
  for (size_t base = warp * 32 * U; base + 32 * U <= chunks; base += warps * 32 * U) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = load16<L>(data + base + u * 32 + lane, policy);
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= fold(v[u]);
  }
  sink_word(acc, sink);
}

template <int U, int L>
__global__ void __launch_bounds__(256) rows_kernel(const uint4* data, int row_chunks, int rows, uint32_t* sink) {
  const uint64_t policy = L == kNcEvictFirst ? evict_first_policy() : 0;
  const int lane = threadIdx.x & 31, warp = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (2 * warp >= rows) return;
  const uint4* a = data + static_cast<size_t>(2 * warp) * row_chunks;
  const uint4* b = a + row_chunks;
  uint32_t acc = 0;
  int c = lane;
  for (; c + (U - 1) * 32 < row_chunks; c += U * 32) {
    uint4 va[U], vb[U];
#pragma unroll
    for (int u = 0; u < U; ++u) va[u] = load16<L>(a + c + u * 32, policy), vb[u] = load16<L>(b + c + u * 32, policy);
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= fold(va[u]) ^ fold(vb[u]);
  }
  for (; c < row_chunks; c += 32) acc ^= fold(load16<L>(a + c, policy)) ^ fold(load16<L>(b + c, policy));
  sink_word(acc, sink);
}

__device__ __forceinline__ void bar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void bar_expect(uint32_t bar, uint32_t bytes) {
  asm volatile("{\n.reg .b64 s;\nmbarrier.arrive.expect_tx.shared::cta.b64 s, [%0], %1;\n}" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
  } while (!done);
}
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}

// Piece i of the buffer goes to block i % grid, into stage (its count within the block) % stages.
__global__ void bulk_kernel(const char* data, size_t pieces, int piece_bytes, int stages, uint32_t* sink) {
  extern __shared__ __align__(128) char smem[];
  __shared__ __align__(8) uint64_t full[16];
  const uint32_t buf = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t bars = static_cast<uint32_t>(__cvta_generic_to_shared(full));
  const size_t mine = pieces > blockIdx.x ? (pieces - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) bar_init(bars + 8 * s, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  auto issue = [&](size_t k) {  // the block's k-th piece
    const int s = static_cast<int>(k % stages);
    bar_expect(bars + 8 * s, piece_bytes);
    bulk_load(buf + s * piece_bytes, data + (blockIdx.x + k * gridDim.x) * piece_bytes, piece_bytes, bars + 8 * s);
  };
  if (threadIdx.x == 0)
    for (size_t k = 0; k < mine && k < static_cast<size_t>(stages); ++k) issue(k);
  uint32_t acc = 0;
  for (size_t k = 0; k < mine; ++k) {
    const int s = static_cast<int>(k % stages);
    bar_wait(bars + 8 * s, static_cast<uint32_t>((k / stages) & 1));
    acc ^= reinterpret_cast<const uint32_t*>(smem + s * piece_bytes)[threadIdx.x];
    __syncthreads();  // everyone is done with stage s
    if (threadIdx.x == 0 && k + stages < mine) issue(k + stages);
  }
  sink_word(acc, sink);
}

int occupancy(const void* kernel, int threads, size_t smem) {
  int blocks = 0;
  LLM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem));
  return blocks;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"read_bandwidth_bench: TB/s of reads that miss the L2, by the way they are issued"};
  int mib = 2048, rounds = 5;
  app.add_option("--mib", mib, "buffer size, MiB")->capture_default_str();
  app.add_option("--rounds", rounds, "timed runs of each row; the best counts")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  cudaDeviceProp prop{};
  LLM_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  const size_t bytes = static_cast<size_t>(mib) << 20;
  char* data = nullptr;
  uint32_t* sink = nullptr;
  LLM_CUDA_CHECK(cudaMalloc(&data, bytes));
  LLM_CUDA_CHECK(cudaMalloc(&sink, 16));
  LLM_CUDA_CHECK(cudaMemset(data, 1, bytes));
  const double copy = copy_bandwidth_gbs(bytes, rounds);
  std::printf("device %s, %d SMs; buffer %d MiB; copy bandwidth %.0f GB/s (read + write); best of %d\n\n", prop.name,
              sms, mib, copy, rounds);
  std::printf("| kind | load | shape | grid | TB/s | of copy |\n|---|---|---|---|---:|---:|\n");
  auto row = [&](const char* kind, const char* load, const std::string& shape, const std::string& grid, size_t read,
                 auto&& launch) {
    launch();  // warm-up (and first-launch costs)
    LLM_CUDA_CHECK(cudaDeviceSynchronize());
    const float ms = best_event_ms(rounds, nullptr, launch);
    const double gbs = static_cast<double>(read) / (ms * 1e-3) / 1e9;
    std::printf("| %s | %s | %s | %s | %.2f | %.0f%% |\n", kind, load, shape.c_str(), grid.c_str(), gbs / 1e3,
                100.0 * gbs / copy);
    std::fflush(stdout);
  };
  const size_t chunks = bytes / 16;

  auto lanes = [&](auto u, auto l, int blocks_per_sm) {
    constexpr int U = decltype(u)::value, L = decltype(l)::value;
    const int max_blocks = occupancy(reinterpret_cast<const void*>(lanes_kernel<U, L>), 256, 0);
    const int per_sm = blocks_per_sm > 0 ? std::min(blocks_per_sm, max_blocks) : max_blocks;
    const int grid = sms * per_sm;
    row("lanes", load_name(L), "U " + std::to_string(U), std::to_string(per_sm) + " x 8 warps a SM",
        chunks / (32 * U) * (32 * U) * 16, [&] {
          lanes_kernel<U, L><<<grid, 256>>>(reinterpret_cast<const uint4*>(data), chunks, sink);
          LLM_CUDA_CHECK_LAUNCH();
        });
  };
  using I = std::integral_constant<int, 0>;
  lanes(std::integral_constant<int, 1>{}, I{}, 0);
  lanes(std::integral_constant<int, 2>{}, I{}, 0);
  lanes(std::integral_constant<int, 4>{}, I{}, 0);
  lanes(std::integral_constant<int, 8>{}, I{}, 0);
  lanes(std::integral_constant<int, 4>{}, I{}, 2);
  lanes(std::integral_constant<int, 8>{}, I{}, 2);
  lanes(std::integral_constant<int, 4>{}, std::integral_constant<int, kPlain>{}, 0);
  lanes(std::integral_constant<int, 4>{}, std::integral_constant<int, kNcEvictFirst>{}, 0);

  // The product's pattern over rows of the decode shapes' widths (bf16 columns x 2 bytes).
  auto rows = [&](auto u, auto l, int row_bytes) {
    constexpr int U = decltype(u)::value, L = decltype(l)::value;
    const int row_chunks = row_bytes / 16;
    const int nrows = static_cast<int>(bytes / row_bytes) & ~1;
    const int grid = (nrows / 2 + 7) / 8;
    row("rows", load_name(L), std::to_string(row_bytes) + " B rows, U " + std::to_string(U),
        std::to_string(grid) + " x 8 warps", static_cast<size_t>(nrows) * row_bytes, [&] {
          rows_kernel<U, L><<<grid, 256>>>(reinterpret_cast<const uint4*>(data), row_chunks, nrows, sink);
          LLM_CUDA_CHECK_LAUNCH();
        });
  };
  using U3 = std::integral_constant<int, 3>;
  using U4 = std::integral_constant<int, 4>;
  using U8 = std::integral_constant<int, 8>;
  using U11 = std::integral_constant<int, 11>;
  using Plain = std::integral_constant<int, kPlain>;
  using Ef = std::integral_constant<int, kNcEvictFirst>;
  rows(U3{}, I{}, 1536);
  rows(U8{}, I{}, 4096);
  rows(U11{}, I{}, 11264);
  rows(U4{}, I{}, 8192);
  rows(U8{}, I{}, 8192);
  rows(U4{}, I{}, 22016);
  rows(U4{}, Plain{}, 8192);
  rows(U4{}, Ef{}, 8192);

  for (int piece : {16 << 10, 32 << 10}) {
    for (int stages : {4, 6}) {
      for (int per_sm : {1, 2}) {
        const size_t smem = static_cast<size_t>(piece) * stages;
        if (smem * per_sm > static_cast<size_t>(prop.sharedMemPerMultiprocessor) - 2048 * per_sm) continue;
        LLM_CUDA_CHECK(cudaFuncSetAttribute(bulk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        const size_t pieces = bytes / piece;
        const int grid = sms * per_sm;
        row("bulk", "-", std::to_string(piece >> 10) + " KiB x " + std::to_string(stages) + " stages",
            std::to_string(per_sm) + " block(s) a SM", pieces * piece, [&] {
              bulk_kernel<<<grid, 128, smem>>>(data, pieces, piece, stages, sink);
              LLM_CUDA_CHECK_LAUNCH();
            });
      }
    }
  }
  cudaFree(data);
  cudaFree(sink);
  return 0;
}
