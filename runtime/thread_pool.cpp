#include "thread_pool.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>

namespace llm {
namespace {

// How long an idle worker spins before it sleeps: longer than the gaps inside a decode step.
constexpr auto kSpinTime = std::chrono::microseconds(2000);

void sdk_parallel_for(void* host, int64_t n, llm_parallel_task task, void* arg) {
  auto* pool = static_cast<ThreadPool*>(host);
  const int64_t grain = std::max<int64_t>(1, n / (pool->size() * 8));
  pool->parallel_for(n, grain, [&](int64_t begin, int64_t end) { task(arg, begin, end); });
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  services_.struct_size = sizeof(services_);
  services_.host = this;
  services_.num_threads = std::max(1, threads);
  services_.parallel_for = sdk_parallel_for;
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::run_chunks() {
  for (;;) {
    const int64_t begin = next_.fetch_add(grain_, std::memory_order_relaxed);
    if (begin >= n_) return;
    (*task_)(begin, std::min(begin + grain_, n_));
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    uint64_t g = generation_.load(std::memory_order_acquire);
    const auto spin_until = std::chrono::steady_clock::now() + kSpinTime;
    for (int i = 0; g == seen; ++i) {
      _mm_pause();
      if ((i & 1023) == 1023 && std::chrono::steady_clock::now() > spin_until) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      g = generation_.load(std::memory_order_acquire);
    }
    seen = g;
    if (stop_) return;
    run_chunks();
    busy_.fetch_sub(1, std::memory_order_release);
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& task) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (workers_.empty() || n <= grain) {
    task(0, n);
    return;
  }
  task_ = &task;
  n_ = n;
  grain_ = grain;
  next_.store(0, std::memory_order_relaxed);
  busy_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mutex_);  // pairs with the sleepers' predicate: no lost wake-up
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  run_chunks();
  while (busy_.load(std::memory_order_acquire) > 0) _mm_pause();
}

}  // namespace llm
