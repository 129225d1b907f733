#include "cuda_check.h"
#include "error.h"
#include "p2p_all_reduce.h"

namespace llm::cuda {
namespace {

struct Params {
  int world, rank;
  float* data;
  unsigned long long count, max_lines;
  uint4* inbox[P2pAllReduce::kMaxRanks];  // rank q's inbox
  uint32_t* counters;                     // this rank's
  const volatile uint32_t* abort_flag;
  int abort_poll_every;
};

__device__ __forceinline__ void store_line(uint4* p, uint4 v) {
  asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

__device__ __forceinline__ uint4 load_line(const uint4* p) {
  uint4 v;
  asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
}

// Lines of two floats, each beside the call's epoch: {value 0, epoch, value 1, epoch}. A reader that sees
// the epoch in both 8-byte halves has the values of this call (8-byte stores are single), with no fence
// and no separate flag: the data is its own flag, as in NCCL's LL protocol.
__global__ void all_reduce_kernel(Params p) {
  __shared__ uint32_t epoch_s;
  const int b = blockIdx.x;
  if (threadIdx.x == 0) epoch_s = p.counters[b] + 1;
  __syncthreads();
  const uint32_t epoch = epoch_s;
  const size_t parity = epoch & 1;
  const size_t lines = (p.count + 1) / 2, slice = (lines + gridDim.x - 1) / gridDim.x;
  const size_t begin = b * slice, end = begin + slice < lines ? begin + slice : lines;

  for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float v0 = p.data[2 * i], v1 = 2 * i + 1 < p.count ? p.data[2 * i + 1] : 0.0f;
    const uint4 line = make_uint4(__float_as_uint(v0), epoch, __float_as_uint(v1), epoch);
    for (int q = 0; q < p.world; ++q)
      if (q != p.rank) store_line(p.inbox[q] + (parity * p.world + p.rank) * p.max_lines + i, line);
  }
  const uint4* mine = p.inbox[p.rank] + parity * p.world * p.max_lines;
  for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    // Sum in rank order: the same additions, so the same bits, on every rank.
    float s0 = 0.0f, s1 = 0.0f;
    for (int r = 0; r < p.world; ++r) {
      float v0, v1;
      if (r == p.rank) {
        v0 = p.data[2 * i], v1 = 2 * i + 1 < p.count ? p.data[2 * i + 1] : 0.0f;
      } else {
        uint4 line;
        for (int spins = 1;; ++spins) {
          line = load_line(mine + r * p.max_lines + i);
          if ((line.y == epoch && line.w == epoch) || (spins % p.abort_poll_every == 0 && *p.abort_flag)) break;
        }
        v0 = __uint_as_float(line.x), v1 = __uint_as_float(line.z);
      }
      s0 += v0, s1 += v1;
    }
    p.data[2 * i] = s0;
    if (2 * i + 1 < p.count) p.data[2 * i + 1] = s1;
  }
  if (threadIdx.x == 0) p.counters[b] = epoch;
}

}  // namespace

std::string P2pAllReduce::unavailable_reason(const std::vector<int>& devices) {
  if (devices.size() < 2) return "one rank";
  if (devices.size() > kMaxRanks) return "more than " + std::to_string(kMaxRanks) + " ranks";
  for (int a : devices)
    for (int b : devices) {
      if (a == b) continue;
      int can = 0;
      if (cudaDeviceCanAccessPeer(&can, a, b) != cudaSuccess || !can) {
        cudaGetLastError();
        return "GPU " + std::to_string(a) + " cannot access GPU " + std::to_string(b) + "'s memory";
      }
    }
  return "";
}

P2pAllReduce::P2pAllReduce(const std::vector<int>& devices, size_t max_count, Tuning tuning)
    : max_count_(max_count), tuning_(tuning) {
  if (tuning_.blocks < 1 || tuning_.blocks > kBlocks || tuning_.abort_poll_every < 1)
    fail("P2P all-reduce: blocks {} (1..{}), abort_poll_every {} (>= 1)", tuning_.blocks, kBlocks,
         tuning_.abort_poll_every);
  const size_t world = devices.size();
  uint32_t* host_abort = nullptr;
  LLM_CUDA_CHECK(cudaHostAlloc(&host_abort, sizeof(uint32_t), cudaHostAllocMapped | cudaHostAllocPortable));
  *host_abort = 0;
  abort_flag_ = host_abort;
  LLM_CUDA_CHECK(cudaHostGetDevicePointer(&abort_device_, host_abort, 0));
  for (int d : devices) {
    LLM_CUDA_CHECK(cudaSetDevice(d));
    for (int peer : devices) {
      if (peer == d) continue;
      const cudaError_t e = cudaDeviceEnablePeerAccess(peer, 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled)
        cudaGetLastError();
      else
        LLM_CUDA_CHECK(e);
    }
    Rank r;
    r.device = d;
    const size_t inbox_bytes = 2 * world * lines() * sizeof(uint4);
    LLM_CUDA_CHECK(cudaMalloc(&r.inbox, inbox_bytes));
    LLM_CUDA_CHECK(cudaMemset(r.inbox, 0, inbox_bytes));  // epoch 0: no call has written a line yet
    LLM_CUDA_CHECK(cudaMalloc(&r.counters, kBlocks * sizeof(uint32_t)));
    LLM_CUDA_CHECK(cudaMemset(r.counters, 0, kBlocks * sizeof(uint32_t)));
    LLM_CUDA_CHECK(cudaDeviceSynchronize());
    ranks_.push_back(r);
  }
}

P2pAllReduce::~P2pAllReduce() {
  for (const Rank& r : ranks_) {
    cudaSetDevice(r.device);
    cudaFree(r.inbox);
    cudaFree(r.counters);
  }
  if (abort_flag_) cudaFreeHost(const_cast<uint32_t*>(abort_flag_));
}

void P2pAllReduce::abort() { *abort_flag_ = 1; }

void P2pAllReduce::run(int rank, float* data, size_t count, cudaStream_t stream) {
  if (count > max_count_) fail("P2P all-reduce of {} floats; at most {}", count, max_count_);
  Params p{};
  p.world = static_cast<int>(ranks_.size());
  p.rank = rank;
  p.data = data;
  p.count = count;
  p.max_lines = lines();
  for (size_t q = 0; q < ranks_.size(); ++q) p.inbox[q] = ranks_[q].inbox;
  p.counters = ranks_[static_cast<size_t>(rank)].counters;
  p.abort_flag = abort_device_;
  p.abort_poll_every = tuning_.abort_poll_every;
  all_reduce_kernel<<<tuning_.blocks, 256, 0, stream>>>(p);
  LLM_CUDA_CHECK_LAUNCH();
}

}  // namespace llm::cuda
