// A one-shot all-reduce for the small buffers of decode steps, between GPUs of this process that can reach
// each other's memory (peer access, NVLink here). Each rank pushes its buffer into its slot of every peer's
// inbox as lines that carry the call's epoch beside the values (no flags, no fences: NCCL's LL protocol),
// waits for every peer's lines, and sums the slots in rank order, so every rank gets the same bits.
// Inboxes alternate between two halves by call parity: a rank cannot write a half again before every peer
// has finished reading it, because finishing the call in between needed that peer's lines.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace llm::cuda {

// How the kernel runs (benches/all_reduce_bench compares them; the defaults are its fastest on 2 H200s).
struct P2pTuning {
  static constexpr int kMaxBlocks = 64;
  int blocks = 32;              // 1..kMaxBlocks blocks, each with a slice of the buffer
  int abort_poll_every = 1024;  // spins on a peer's line between reads of the abort flag (host memory)
};

class P2pAllReduce {
 public:
  static constexpr int kMaxRanks = 8;
  static constexpr int kBlocks = P2pTuning::kMaxBlocks;  // per-block call counters are laid out for this many
  using Tuning = P2pTuning;

  // Why `devices` cannot use it (a pair without peer access, too many ranks), or "" when they can.
  static std::string unavailable_reason(const std::vector<int>& devices);
  // Enables peer access between every pair and allocates each rank's inbox for `max_count` floats.
  P2pAllReduce(const std::vector<int>& devices, size_t max_count, Tuning tuning = {});
  ~P2pAllReduce();
  P2pAllReduce(const P2pAllReduce&) = delete;
  P2pAllReduce& operator=(const P2pAllReduce&) = delete;

  size_t max_count() const { return max_count_; }
  // Enqueues the sum of `data` (count <= max_count floats, on rank's device) over all ranks, in place.
  // Every rank must make the same sequence of calls.
  void run(int rank, float* data, size_t count, cudaStream_t stream);
  // Releases ranks spinning for a peer that will never come (after a failure); unusable afterwards.
  void abort();

 private:
  struct Rank {
    int device = 0;
    uint4* inbox = nullptr;        // [2][world][lines()]: {value, epoch, value, epoch}
    uint32_t* counters = nullptr;  // [kBlocks]: calls made so far, per block
  };
  size_t lines() const { return (max_count_ + 1) / 2; }
  std::vector<Rank> ranks_;
  size_t max_count_;
  Tuning tuning_;
  volatile uint32_t* abort_flag_ = nullptr;  // host memory mapped into every device
  uint32_t* abort_device_ = nullptr;         // the same, as the devices address it
};

}  // namespace llm::cuda
