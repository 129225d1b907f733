// Host stand-ins for the CUDA built-ins the tensor-core GEMV kernel uses (see run.sh): fibers for threads,
// barriers for warp collectives and __syncthreads, checked loads.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <ucontext.h>
#include <vector_types.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>
#undef __device__
#undef __global__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(x)

namespace emu {
struct Dim {
  unsigned x = 0, y = 0, z = 0;
};
struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  unsigned tid;
  bool done = false;
  bool waited = false;
};
struct Barrier {
  int count = 0, generation = 0;
};
struct Warp {
  Barrier bar;
  uint32_t slot[32][10];
};
struct Block {
  Dim block_idx, block_dim, grid_dim;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier block_bar;
  std::vector<float> shared;
  int current = 0;
  ucontext_t sched;
};
inline Block* g_block = nullptr;
struct Range {
  const char* lo;
  size_t n;
  bool activation = false;  // written by the kernel before (x): coherent loads after the PDL wait only
};
inline std::vector<Range> g_ranges;  // readable memory
// g_nc_activation: activations read through the read-only path (__ldg, ld.global.nc), which promises
// data that no one writes while the kernel runs: ptxas may then hoist the load above griddepcontrol.wait
// (it did), so the program order the emulator sees would not protect it.
inline long g_oob = 0, g_misaligned = 0, g_reads_before_wait = 0, g_nc_activation = 0;

// The range holding [p, p + n) (nullptr, counted as out of bounds, where none does).
inline const Range* check_read(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  for (const Range& r : g_ranges)
    if (c >= r.lo && c + n <= r.lo + r.n) return &r;
  if (g_oob++ < 5) std::fprintf(stderr, "OOB read %p (%zu bytes)\n", p, n);
  return nullptr;
}
inline Fiber& me() { return g_block->fibers[g_block->current]; }
inline void yield() { swapcontext(&me().ctx, &g_block->sched); }
inline void barrier(Barrier& b, int n) {
  const int gen = b.generation;
  if (++b.count == n) {
    b.count = 0;
    ++b.generation;
    return;
  }
  while (b.generation == gen) yield();
}
inline unsigned tid() { return me().tid; }
inline Warp& warp() { return g_block->warps[tid() / 32]; }
inline int active_in_warp() {  // lanes of this warp that exist
  const int w = tid() / 32;
  const int n = g_block->block_dim.x - w * 32;
  return n < 32 ? n : 32;
}
inline void pdl_wait() { me().waited = true; }
inline uint4 load16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16) {
    if (g_misaligned++ < 5) std::fprintf(stderr, "misaligned 16B load %p\n", p);
  }
  check_read(p, 16);
  uint4 v;
  std::memcpy(&v, p, 16);
  return v;
}
template <typename T>
T ldg(const T* p) {
  if (!me().waited) ++g_reads_before_wait;
  if (reinterpret_cast<uintptr_t>(p) % alignof(T)) {
    if (g_misaligned++ < 5) std::fprintf(stderr, "misaligned ldg %p\n", (const void*)p);
  }
  const Range* r = check_read(p, sizeof(T));
  if (r && r->activation && g_nc_activation++ < 5)
    std::fprintf(stderr, "activation read with __ldg %p\n", (const void*)p);
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
// A coherent load of an activation (mma.cuh's load_activation16/2): after the PDL wait only.
template <typename T>
T load_activation(const void* p) {
  if (!me().waited) ++g_reads_before_wait;
  if (reinterpret_cast<uintptr_t>(p) % alignof(T)) {
    if (g_misaligned++ < 5) std::fprintf(stderr, "misaligned activation load %p\n", p);
  }
  check_read(p, sizeof(T));
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
inline float shfl_xor(unsigned mask, float v, int lm) {
  Warp& w = warp();
  const int lane = tid() % 32;
  std::memcpy(&w.slot[lane][0], &v, 4);
  barrier(w.bar, 32);
  float r;
  std::memcpy(&r, &w.slot[lane ^ lm][0], 4);
  barrier(w.bar, 32);
  return r;
}
template <typename T>
float elem(uint32_t word, int half) {
  const uint16_t b = half ? word >> 16 : word & 0xffff;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    uint32_t f = uint32_t(b) << 16;
    float v;
    std::memcpy(&v, &f, 4);
    return v;
  } else {
    __half_raw r;
    r.x = b;
    return __half2float(__half(r));
  }
}
// D = A B + C over the warp, fragments as PTX documents them for m16n8k16 (.row.col)
template <typename T>
void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  Warp& w = warp();
  const int lane = tid() % 32;
  uint32_t* s = w.slot[lane];
  s[0] = a0, s[1] = a1, s[2] = a2, s[3] = a3, s[4] = b0, s[5] = b1;
  barrier(w.bar, 32);
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    const uint32_t* q = w.slot[l];
    for (int h = 0; h < 2; ++h) {
      A[g][2 * t + h] = elem<T>(q[0], h);
      A[g + 8][2 * t + h] = elem<T>(q[1], h);
      A[g][2 * t + 8 + h] = elem<T>(q[2], h);
      A[g + 8][2 * t + 8 + h] = elem<T>(q[3], h);
      B[2 * t + h][g] = elem<T>(q[4], h);
      B[2 * t + 8 + h][g] = elem<T>(q[5], h);
    }
  }
  barrier(w.bar, 32);
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    double acc = d[i];
    for (int k = 0; k < 16; ++k) acc += double(A[row][k]) * B[k][col];
    d[i] = float(acc);
  }
}
inline void syncthreads() { barrier(g_block->block_bar, g_block->block_dim.x); }

inline void fiber_main(unsigned lo, unsigned hi) {
  auto* f = reinterpret_cast<std::function<void()>*>((uintptr_t(hi) << 32) | lo);
  (*f)();
  me().done = true;
  swapcontext(&me().ctx, &g_block->sched);
}
// Runs body() on every thread of every block (blocks one after another).
inline void launch(unsigned grid, unsigned block, size_t shared_floats, const std::function<void()>& body) {
  for (unsigned b = 0; b < grid; ++b) {
    Block blk;
    blk.block_idx.x = b, blk.block_dim.x = block, blk.grid_dim.x = grid;
    blk.fibers.resize(block);
    blk.warps.resize((block + 31) / 32);
    blk.shared.assign(shared_floats + 1, NAN);
    g_block = &blk;
    std::function<void()> fn = body;
    for (unsigned i = 0; i < block; ++i) {
      Fiber& f = blk.fibers[i];
      f.tid = i;
      f.stack.resize(256 * 1024);
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = nullptr;
      const uintptr_t p = reinterpret_cast<uintptr_t>(&fn);
      makecontext(&f.ctx, (void (*)())fiber_main, 2, unsigned(p & 0xffffffffu), unsigned(p >> 32));
    }
    for (bool any = true; any;) {
      any = false;
      for (unsigned i = 0; i < block; ++i) {
        if (blk.fibers[i].done) continue;
        any = true;
        blk.current = i;
        swapcontext(&blk.sched, &blk.fibers[i].ctx);
      }
    }
    g_block = nullptr;
  }
}
}  // namespace emu

#define threadIdx (emu::Dim{emu::tid(), 0, 0})
#define blockIdx (emu::g_block->block_idx)
#define blockDim (emu::g_block->block_dim)
#define gridDim (emu::g_block->grid_dim)
template <typename T>
T __ldg(const T* p) {
  return emu::ldg(p);
}
inline float __shfl_xor_sync(unsigned m, float v, int l) { return emu::shfl_xor(m, v, l); }
inline void __syncthreads() { emu::syncthreads(); }
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int min(int a, int b) { return a < b ? a : b; }
