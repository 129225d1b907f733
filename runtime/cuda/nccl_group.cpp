#include "nccl_group.h"

#include <cstdlib>

#include "cuda_check.h"
#include "error.h"

#if LLM_HAVE_NCCL
#include <nccl.h>
#endif

namespace llm::cuda {

#if LLM_HAVE_NCCL
namespace {

void check_nccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) fail("NCCL {} failed: {} ({})", what, ncclGetErrorString(r), ncclGetLastError(nullptr));
}

class NcclRank final : public DeviceCollective {
 public:
  NcclRank(ncclComm_t comm, int rank, P2pAllReduce* p2p) : comm_(comm), rank_(rank), p2p_(p2p) {}
  ~NcclRank() override {
    if (comm_) ncclCommDestroy(comm_);
  }
  void all_reduce_sum(float* data, size_t count, cudaStream_t stream) override {
    if (p2p_ && count <= p2p_->max_count()) return p2p_->run(rank_, data, count, stream);
    check_nccl(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, stream), "all-reduce");
  }
  void abort() {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
  }

 private:
  ncclComm_t comm_;
  int rank_;
  P2pAllReduce* p2p_;
};

}  // namespace

NcclGroup::NcclGroup(const std::vector<int>& devices) {
  // overwrite = 0: the user's own settings win. Connections are made here rather than at the first
  // collective of each algorithm, which could otherwise fall inside a decode graph's capture.
  setenv("NCCL_NVLS_ENABLE", "0", 0);
  setenv("NCCL_RUNTIME_CONNECT", "0", 0);
  const char* choice = std::getenv("LLM_ALL_REDUCE");
  const std::string why_not =
      choice && std::string(choice) == "nccl" ? "LLM_ALL_REDUCE=nccl" : P2pAllReduce::unavailable_reason(devices);
  if (why_not.empty()) {
    p2p_ = std::make_unique<P2pAllReduce>(devices, kP2pMaxBytes / sizeof(float));
    small_ = fmt::format("one-shot P2P kernel up to {} KiB, NCCL above", kP2pMaxBytes >> 10);
  } else {
    small_ = fmt::format("NCCL ({})", why_not);
  }
  const int n = static_cast<int>(devices.size());
  std::vector<ncclComm_t> comms(devices.size());
  check_nccl(ncclCommInitAll(comms.data(), n, devices.data()), "communicator set-up (ncclCommInitAll)");
  for (int r = 0; r < n; ++r) ranks_.push_back(std::make_unique<NcclRank>(comms[r], r, p2p_.get()));
}

NcclGroup::~NcclGroup() {
  ranks_.clear();  // the communicators, then the P2P buffers
  p2p_.reset();
}

void NcclGroup::abort() {
  if (p2p_) p2p_->abort();
  for (auto& r : ranks_) static_cast<NcclRank&>(*r).abort();
}

std::string NcclGroup::version() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "NCCL (version unknown)";
  return fmt::format("NCCL {}.{}.{}", v / 10000, v / 100 % 100, v % 100);
}

bool have_nccl() { return true; }

#else

NcclGroup::NcclGroup(const std::vector<int>& devices) {
  fail(
      "tensor parallelism over {} GPUs needs NCCL, and this build has none (no nccl.h / libnccl was found "
      "beside the CUDA toolkit when it was built)",
      devices.size());
}
NcclGroup::~NcclGroup() = default;
void NcclGroup::abort() {}
std::string NcclGroup::version() { return "no NCCL in this build"; }
bool have_nccl() { return false; }

#endif

}  // namespace llm::cuda
