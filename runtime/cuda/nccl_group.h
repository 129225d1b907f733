// A tensor-parallel group of GPUs in this process, one rank per device, summing through NCCL. Each rank is
// driven by its own host thread (TensorParallelModel); NCCL needs no group calls then, and each rank's
// all-reduce is captured in that rank's decode graph. Buffers of up to kP2pMaxBytes (a decode step's
// residual) go through P2pAllReduce where the GPUs reach each other's memory (LLM_ALL_REDUCE=nccl turns
// that off, to compare); larger ones (prefill) through NCCL. NVLink multicast (NVLS) stays off unless the user
// turned it on: on shared hosts it can take the GPUs out of service.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "device_collective.h"
#include "p2p_all_reduce.h"

namespace llm::cuda {

class NcclGroup {
 public:
  static constexpr size_t kP2pMaxBytes = size_t{256} << 10;  // 8 tokens of an 8192-wide residual

  // One communicator per device of `devices` (rank r on devices[r]); throws llm::Error naming the NCCL
  // failure, or saying that this build has no NCCL.
  explicit NcclGroup(const std::vector<int>& devices);
  ~NcclGroup();
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;

  int world() const { return static_cast<int>(ranks_.size()); }
  DeviceCollective& rank(int r) { return *ranks_[static_cast<size_t>(r)]; }
  // Releases ranks blocked in a collective after another rank failed; the group is unusable afterwards.
  void abort();
  // "NCCL 2.27.7", or why there is none.
  static std::string version();
  // How small all-reduces (decode steps) are done: the one-shot P2P kernel, or NCCL and why.
  const std::string& small_all_reduce() const { return small_; }

 private:
  std::unique_ptr<P2pAllReduce> p2p_;  // small all-reduces, where every pair of GPUs has peer access
  std::vector<std::unique_ptr<DeviceCollective>> ranks_;
  std::string small_;
};

// Whether this build can run tensor parallelism over GPUs (it was built against NCCL).
bool have_nccl();

}  // namespace llm::cuda
