// The runtime's one pool of CPU threads. Workers spin briefly between jobs (a decode step issues dozens
// of short parallel products, and waking a sleeping thread costs more than one of them), then sleep.
// CPU plugins share it through the SDK's llm_host_services, so no second pool fights over the cores.
#pragma once

#include <llm/attention_backend.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace llm {

class ThreadPool {
 public:
  // `threads` >= 1 in all, the calling thread included.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Runs task(begin, end) over [0, n) in chunks of `grain` taken in turn by every thread, the caller
  // included; returns when all chunks are done. Not reentrant: one job at a time.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& task);

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // The pool as SDK host services (valid while the pool lives).
  const llm_host_services* services() const { return &services_; }

 private:
  void worker_loop();
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};  // bumped once per job
  std::atomic<int64_t> next_{0};         // next chunk start
  std::atomic<int> busy_{0};             // workers still inside the current job
  int64_t n_ = 0, grain_ = 1;
  const std::function<void(int64_t, int64_t)>* task_ = nullptr;
  bool stop_ = false;
  llm_host_services services_{};
};

}  // namespace llm
