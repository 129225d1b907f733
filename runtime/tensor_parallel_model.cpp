#include "tensor_parallel_model.h"

#include <exception>
#include <mutex>
#include <thread>

namespace llm {

TensorParallelModel::TensorParallelModel(std::vector<std::unique_ptr<LanguageModel>> ranks, std::function<void()> abort,
                                         std::shared_ptr<void> keep_alive)
    : keep_alive_(std::move(keep_alive)), ranks_(std::move(ranks)), abort_(std::move(abort)) {}

TensorParallelModel::~TensorParallelModel() { ranks_.clear(); }  // before what they point into

void TensorParallelModel::on_all_ranks(const std::function<void(LanguageModel&, int)>& step) {
  const int world = static_cast<int>(ranks_.size());
  std::mutex mutex;
  std::exception_ptr first;  // the root cause: ranks fail after it only because it aborted the collective
  auto run = [&](int r) {
    try {
      step(*ranks_[static_cast<size_t>(r)], r);
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (!first) first = std::current_exception();
      }
      abort_();  // the other ranks may be waiting for this one in the all-reduce
    }
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < world; ++r) threads.emplace_back(run, r);
  run(0);
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

const float* TensorParallelModel::forward(const std::vector<SequenceChunk>& chunks) {
  const float* logits = nullptr;
  on_all_ranks([&](LanguageModel& m, int r) {
    const float* l = m.forward(chunks);
    if (r == 0) logits = l;
  });
  return logits;
}

void TensorParallelModel::forward_argmax(const std::vector<SequenceChunk>& chunks, int* ids) {
  scratch_ids_.resize(ranks_.size());
  on_all_ranks([&](LanguageModel& m, int r) {
    if (r == 0) return m.forward_argmax(chunks, ids);
    scratch_ids_[static_cast<size_t>(r)].resize(chunks.size());
    m.forward_argmax(chunks, scratch_ids_[static_cast<size_t>(r)].data());
  });
}

}  // namespace llm
