#include "tensor_parallel_model.h"

namespace llm {

TensorParallelModel::TensorParallelModel(std::vector<std::unique_ptr<LanguageModel>> ranks, std::function<void()> abort,
                                         std::shared_ptr<void> keep_alive)
    : keep_alive_(std::move(keep_alive)), ranks_(std::move(ranks)), abort_(std::move(abort)) {
  for (int r = 1; r < world(); ++r) threads_.emplace_back([this, r] { rank_loop(r); });
}

TensorParallelModel::~TensorParallelModel() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  start_.notify_all();
  for (auto& t : threads_) t.join();
  ranks_.clear();  // before what they point into
}

void TensorParallelModel::run_rank(int r) {
  try {
    (*step_)(*ranks_[static_cast<size_t>(r)], r);
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!first_failure_) first_failure_ = std::current_exception();
    }
    abort_();  // the other ranks may be waiting for this one in the all-reduce
  }
}

void TensorParallelModel::rank_loop(int r) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      start_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    run_rank(r);
    std::lock_guard<std::mutex> lock(mutex_);
    if (--pending_ == 0) done_.notify_one();
  }
}

void TensorParallelModel::on_all_ranks(const std::function<void(LanguageModel&, int)>& step) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    step_ = &step;
    first_failure_ = nullptr;
    pending_ = world() - 1;
    ++generation_;
  }
  start_.notify_all();
  run_rank(0);
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return pending_ == 0; });
  step_ = nullptr;
  if (first_failure_) std::rethrow_exception(first_failure_);
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
