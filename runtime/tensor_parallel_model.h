// A LanguageModel made of the ranks of a tensor-parallel group (tensor_parallel.h): every call runs on
// all ranks together, rank 0 on the caller's thread and each other rank on a thread of its own that lives
// as long as the model (a rank must not share a thread: it waits in the all-reduce for the others), and the
// result is rank 0's (after each all-reduce every rank holds the same residual stream). A rank that fails
// aborts the collective, so the others are released rather than left waiting, and the error is rethrown.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "language_model.h"

namespace llm {

class TensorParallelModel final : public LanguageModel {
 public:
  // `ranks`: the rank models, rank 0 first; `abort`: releases ranks waiting in the collective.
  // `keep_alive`: what the ranks point into (plans, weight shards, pools, the collective), destroyed after them.
  TensorParallelModel(std::vector<std::unique_ptr<LanguageModel>> ranks, std::function<void()> abort,
                      std::shared_ptr<void> keep_alive);
  ~TensorParallelModel() override;

  const ModelConfig& config() const override { return ranks_[0]->config(); }
  int max_batch() const override { return ranks_[0]->max_batch(); }
  int max_context() const override { return ranks_[0]->max_context(); }
  const float* forward(const std::vector<SequenceChunk>& chunks) override;
  void forward_argmax(const std::vector<SequenceChunk>& chunks, int* ids) override;
  std::string attention_backend() const override { return ranks_[0]->attention_backend(); }
  std::vector<std::string> attention_backends_used() const override { return ranks_[0]->attention_backends_used(); }
  int world() const { return static_cast<int>(ranks_.size()); }
  const LanguageModel& rank(int r) const { return *ranks_[static_cast<size_t>(r)]; }

 private:
  // Runs step(rank model, rank) on every rank at once; rethrows the first failure.
  void on_all_ranks(const std::function<void(LanguageModel&, int)>& step);
  void rank_loop(int rank);
  void run_rank(int rank);

  std::shared_ptr<void> keep_alive_;  // declared first: destroyed last
  std::vector<std::unique_ptr<LanguageModel>> ranks_;
  std::function<void()> abort_;
  std::vector<std::vector<int>> scratch_ids_;

  // The rank threads (ranks 1..world-1) and the step they are given.
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable start_, done_;
  const std::function<void(LanguageModel&, int)>* step_ = nullptr;
  uint64_t generation_ = 0;  // bumped once per step
  int pending_ = 0;          // rank threads still inside the step
  bool stop_ = false;
  std::exception_ptr first_failure_;  // the root cause: ranks fail after it only because it aborted the group
};

}  // namespace llm
