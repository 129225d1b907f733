#include "cuda_allocator.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "cuda_check.h"
#include "error.h"
#include "log.h"

namespace llm::cuda {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kSmallLimit = kMiB;      // requests below this are "small"
constexpr size_t kSmallRound = 512;       // small requests round up to this
constexpr size_t kLargeRound = 2 * kMiB;  // large requests round up to this
// Past this a request cannot be rounded without overflow (and can never be satisfied anyway).
constexpr size_t kMaxRoundable = std::numeric_limits<size_t>::max() - kLargeRound + 1;

constexpr int kNumTags = 5;

int tag_index(AllocTag tag) {
  const int i = static_cast<int>(tag);
  return i >= 0 && i < kNumTags ? i : static_cast<int>(AllocTag::Other);
}

// The largest cached block a request of size class `rounded` may take (blocks are never split, so this
// bounds the waste): twice the class for small requests, the class plus max(2 MiB, 1/8) for large ones.
size_t max_fit(size_t rounded) {
  if (rounded <= kSmallLimit) return 2 * rounded;
  const size_t slack = std::max(kLargeRound, rounded / 8);
  return rounded > std::numeric_limits<size_t>::max() - slack ? std::numeric_limits<size_t>::max() : rounded + slack;
}

// Makes `device` current for a scope and restores the previous device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    LLM_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) {
      LLM_CUDA_CHECK(cudaSetDevice(device));
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// Clears a non-sticky error that a call just returned, so that the next cudaGetLastError() (say, a caller's
// launch check) does not report it.
void clear_last_error() { (void)cudaGetLastError(); }

}  // namespace

const char* alloc_tag_name(AllocTag tag) {
  switch (tag) {
    case AllocTag::Weights: return "weights";
    case AllocTag::KvCache: return "KV cache";
    case AllocTag::Activations: return "activations";
    case AllocTag::Workspace: return "workspace";
    case AllocTag::Other: return "other";
  }
  return "other";
}

size_t round_allocation(size_t bytes) {
  if (bytes < kSmallLimit) {
    if (bytes == 0) return kSmallRound;
    return (bytes + kSmallRound - 1) / kSmallRound * kSmallRound;
  }
  if (bytes > kMaxRoundable) fail("allocation request of {} bytes is too large", bytes);
  return (bytes + kLargeRound - 1) / kLargeRound * kLargeRound;
}

std::string human_bytes(size_t bytes) {
  if (bytes < 1024) return fmt::format("{} bytes", bytes);
  static const char* const units[] = {"KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes) / 1024.0;
  int unit = 0;
  while (value >= 1024.0 && unit < 3) {
    value /= 1024.0;
    ++unit;
  }
  return fmt::format("{:.1f} {}", value, units[unit]);
}

CachingAllocator::CachingAllocator(int device) : device_(device) {}

CachingAllocator::~CachingAllocator() {
  try {
    std::lock_guard<std::mutex> lock(mutex_);
    if (live_.empty() && free_.empty() && spare_events_.empty()) return;  // never touched CUDA
    if (!live_.empty()) {
      size_t live_bytes = 0;
      for (const auto& entry : live_) live_bytes += entry.second.size;
      log().warn("CUDA allocator on device {} destroyed with {} blocks ({}) still in use; freeing them", device_,
                 live_.size(), human_bytes(live_bytes));
    }
    int previous = 0;
    const bool switched =
        cudaGetDevice(&previous) == cudaSuccess && previous != device_ && cudaSetDevice(device_) == cudaSuccess;
    // Work still queued may use the blocks: let it finish (errors ignored: the runtime may be shutting down).
    (void)cudaDeviceSynchronize();
    for (auto& entry : live_) (void)cudaFree(entry.second.ptr);
    for (auto& entry : free_) {
      if (entry.second.ready) (void)cudaEventDestroy(entry.second.ready);
      (void)cudaFree(entry.second.ptr);
    }
    for (cudaEvent_t event : spare_events_) (void)cudaEventDestroy(event);
    live_.clear();
    free_.clear();
    spare_events_.clear();
    clear_last_error();
    if (switched) (void)cudaSetDevice(previous);
  } catch (...) {
    // A destructor never throws (logging can, in theory).
  }
}

void* CachingAllocator::allocate(size_t bytes, cudaStream_t stream, AllocTag tag) {
  const size_t rounded = bytes > kMaxRoundable ? bytes : round_allocation(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  Block block{};
  if (!take_cached_block(rounded, stream, block)) {
    block.ptr = cuda_malloc_or_throw(bytes, rounded, tag);
    block.size = rounded;
  }
  block.stream = stream;
  block.tag = tag;
  block.ready = nullptr;
  live_.emplace(block.ptr, block);
  stats_.bytes_in_use += block.size;
  stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
  stats_.bytes_by_tag[tag_index(tag)] += block.size;
  ++stats_.allocations;
  return block.ptr;
}

bool CachingAllocator::take_cached_block(size_t rounded, cudaStream_t stream, Block& out) {
  const auto first = free_.lower_bound(rounded);
  const auto last = free_.upper_bound(max_fit(rounded));
  auto take = [&](std::multimap<size_t, Block>::iterator it) {
    out = it->second;
    free_.erase(it);
    stats_.bytes_cached -= out.size;
    if (out.ready) release_event(out.ready);
    out.ready = nullptr;
    return true;
  };
  // Best fit on the same stream: stream order makes it safe at once, even with work still queued.
  for (auto it = first; it != last; ++it) {
    if (it->second.stream == stream) return take(it);
  }
  // Best fit from another stream whose work on the block has finished.
  for (auto it = first; it != last; ++it) {
    const Block& b = it->second;
    if (!b.ready) continue;  // no event recorded: only its own stream may reuse it
    const cudaError_t before = cudaPeekAtLastError();
    const cudaError_t status = cudaEventQuery(b.ready);
    if (status == cudaSuccess) return take(it);
    if (status == cudaErrorNotReady) {
      if (before == cudaSuccess) clear_last_error();  // "not ready" is no error; keep a caller's real one
      continue;
    }
    clear_last_error();
    throw_cuda_error(status, "cudaEventQuery(block.ready)", __FILE__, __LINE__);
  }
  return false;
}

void* CachingAllocator::cuda_malloc_or_throw(size_t requested, size_t rounded, AllocTag tag) {
  DeviceGuard guard(device_);
  if (total_memory_ == 0) {
    size_t free_bytes = 0, total_bytes = 0;
    LLM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    total_memory_ = total_bytes;
  }
  // More than the whole device can never succeed: fail at once and keep the cache.
  if (rounded > total_memory_) throw_out_of_memory(requested, rounded, tag);
  for (int attempt = 0;; ++attempt) {
    void* ptr = nullptr;
    const cudaError_t status = cudaMalloc(&ptr, rounded);
    if (status == cudaSuccess) {
      ++stats_.cuda_malloc_calls;
      return ptr;
    }
    clear_last_error();
    if (status != cudaErrorMemoryAllocation) throw_cuda_error(status, "cudaMalloc(&ptr, rounded)", __FILE__, __LINE__);
    if (attempt > 0 || free_.empty()) throw_out_of_memory(requested, rounded, tag);
    log().warn("CUDA out of memory allocating {} for {} on device {}: returning {} of cached blocks and retrying",
               human_bytes(rounded), alloc_tag_name(tag), device_, human_bytes(stats_.bytes_cached));
    empty_cache_locked();
  }
}

void CachingAllocator::throw_out_of_memory(size_t requested, size_t rounded, AllocTag tag) {
  size_t free_bytes = 0, total_bytes = 0;
  std::string memory;
  const cudaError_t status = cudaMemGetInfo(&free_bytes, &total_bytes);
  if (status == cudaSuccess) {
    memory = fmt::format("{} free of {} total", human_bytes(free_bytes), human_bytes(total_bytes));
  } else {
    clear_last_error();
    memory = fmt::format("free and total memory unknown (cudaMemGetInfo: {})", cudaGetErrorString(status));
  }
  const std::string asked = requested == rounded ? std::string() : fmt::format(", {} requested", requested);
  fail(
      "CUDA out of memory: cannot allocate {} bytes ({}{}) for {} on device {}: {} ({} in use by this allocator, {} "
      "cached)",
      rounded, human_bytes(rounded), asked, alloc_tag_name(tag), device_, memory, human_bytes(stats_.bytes_in_use),
      human_bytes(stats_.bytes_cached));
}

void CachingAllocator::deallocate(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = live_.find(ptr);
  if (it == live_.end()) {
    fail("CUDA allocator: deallocate({}) of a pointer it did not hand out or already took back (double free?)", ptr);
  }
  Block block = it->second;
  live_.erase(it);
  stats_.bytes_in_use -= block.size;
  stats_.bytes_by_tag[tag_index(block.tag)] -= block.size;

  // Mark where the work queued so far on the block's stream ends: another stream may take the block once
  // that has completed. Without an event (a CUDA failure) the block stays cached for its own stream only.
  const char* call = "cudaEventCreateWithFlags(&event, cudaEventDisableTiming)";
  cudaError_t status = acquire_event(&block.ready);
  if (status == cudaSuccess) {
    call = "cudaEventRecord(block.ready, block.stream)";
    status = cudaEventRecord(block.ready, block.stream);
    if (status != cudaSuccess) release_event(block.ready);
  }
  if (status != cudaSuccess) block.ready = nullptr;
  free_.emplace(block.size, block);
  stats_.bytes_cached += block.size;
  if (status != cudaSuccess) {
    clear_last_error();
    throw_cuda_error(status, call, __FILE__, __LINE__);
  }
}

cudaError_t CachingAllocator::acquire_event(cudaEvent_t* event) {
  if (!spare_events_.empty()) {
    *event = spare_events_.back();
    spare_events_.pop_back();
    return cudaSuccess;
  }
  int previous = 0;
  cudaError_t status = cudaGetDevice(&previous);
  if (status != cudaSuccess) return status;
  if (previous != device_ && (status = cudaSetDevice(device_)) != cudaSuccess) return status;
  status = cudaEventCreateWithFlags(event, cudaEventDisableTiming);
  if (previous != device_) (void)cudaSetDevice(previous);
  return status;
}

void CachingAllocator::release_event(cudaEvent_t event) { spare_events_.push_back(event); }

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  empty_cache_locked();
}

void CachingAllocator::empty_cache_locked() {
  if (free_.empty()) return;
  DeviceGuard guard(device_);
  const bool any_without_event =
      std::any_of(free_.begin(), free_.end(), [](const auto& entry) { return entry.second.ready == nullptr; });
  if (any_without_event) LLM_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto it = free_.begin(); it != free_.end();) {
    Block& block = it->second;
    if (block.ready) {
      LLM_CUDA_CHECK(cudaEventSynchronize(block.ready));  // the work queued on the block has finished
      release_event(block.ready);
      block.ready = nullptr;
    }
    LLM_CUDA_CHECK(cudaFree(block.ptr));
    ++stats_.cuda_free_calls;
    stats_.bytes_cached -= block.size;
    it = free_.erase(it);
  }
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

std::string CachingAllocator::stats_line() const {
  const AllocatorStats s = stats();
  return fmt::format("allocator: {} in use, {} cached, peak {}, {} cudaMalloc calls", human_bytes(s.bytes_in_use),
                     human_bytes(s.bytes_cached), human_bytes(s.peak_bytes_in_use), s.cuda_malloc_calls);
}

DeviceBuffer::DeviceBuffer(CachingAllocator& allocator, size_t bytes, cudaStream_t stream, AllocTag tag)
    : allocator_(&allocator), ptr_(allocator.allocate(bytes, stream, tag)), size_(bytes), stream_(stream) {}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : allocator_(std::exchange(other.allocator_, nullptr)),
      ptr_(std::exchange(other.ptr_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      stream_(std::exchange(other.stream_, nullptr)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    allocator_ = std::exchange(other.allocator_, nullptr);
    ptr_ = std::exchange(other.ptr_, nullptr);
    size_ = std::exchange(other.size_, 0);
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

void DeviceBuffer::reset() noexcept {
  if (ptr_ == nullptr) return;
  void* ptr = std::exchange(ptr_, nullptr);
  size_ = 0;
  try {
    allocator_->deallocate(ptr);
  } catch (const std::exception& e) {
    try {
      log().error("DeviceBuffer: returning {} to the allocator failed: {}", fmt::ptr(ptr), e.what());
    } catch (...) {
    }
  }
}

}  // namespace llm::cuda
