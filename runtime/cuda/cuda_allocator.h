// A caching, stream-ordered device allocator with size classes. The project this one descends from died
// with "CUDA error when allocating 0 MB memory": here zero-byte and tiny requests are valid, freed
// blocks are reused without cudaFree, and running out of memory first empties the cache and retries once,
// then fails with the request size, free and total memory, and what the memory was for.
//
// Reuse policy: a freed block is cached, not returned to CUDA. A request takes the smallest cached block
// that is large enough and not wasteful (at most twice the size class below 1 MiB; at most the size class
// plus max(2 MiB, 1/8) from 1 MiB up; blocks are never split). A block freed on the stream that asks for it
// is reused at once (stream order protects the work still queued on it); a block freed on another stream
// only once the event recorded on that stream at free time has completed. Streams that own cached blocks
// must not be destroyed with work still pending on them (a new stream can get the same handle).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace llm::cuda {

// What an allocation is for: named in out-of-memory errors and counted in the statistics.
enum class AllocTag { Weights, KvCache, Activations, Workspace, Other };
const char* alloc_tag_name(AllocTag tag);

struct AllocatorStats {
  size_t bytes_in_use = 0;  // handed out and not yet freed (rounded sizes)
  size_t bytes_cached = 0;  // held from CUDA but free for reuse
  size_t peak_bytes_in_use = 0;
  uint64_t cuda_malloc_calls = 0;
  uint64_t cuda_free_calls = 0;
  uint64_t allocations = 0;     // allocate() calls
  size_t bytes_by_tag[5] = {};  // in use, by AllocTag
};

class CachingAllocator {
 public:
  explicit CachingAllocator(int device = 0);
  ~CachingAllocator();  // returns every block to CUDA
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // A block of at least `bytes` (0 is valid and gives a distinct non-null pointer) usable in order on
  // `stream`. Throws llm::Error on failure (see the header comment).
  void* allocate(size_t bytes, cudaStream_t stream, AllocTag tag);
  // Returns `ptr` (from allocate; nullptr is ignored). Work already queued on the stream it was allocated
  // on may still use it: the block is reused at once on that stream, and on another stream only after that
  // work has finished. Throws llm::Error for a pointer it did not hand out or already took back.
  void deallocate(void* ptr);
  // Returns every cached (free) block to CUDA, after the work queued on it has finished.
  void empty_cache();
  AllocatorStats stats() const;
  // One line: in use, cached, peak, cudaMalloc calls.
  std::string stats_line() const;
  int device() const { return device_; }

 private:
  struct Block {
    void* ptr;
    size_t size;
    cudaStream_t stream;
    AllocTag tag;
    cudaEvent_t ready = nullptr;  // recorded on `stream` at free; null: only reusable on `stream`
  };
  // The helpers below run with mutex_ held.
  void* cuda_malloc_or_throw(size_t requested, size_t rounded, AllocTag tag);
  [[noreturn]] void throw_out_of_memory(size_t requested, size_t rounded, AllocTag tag);
  // Moves a fitting cached block for `stream` out of the cache into `out`; false when none fits.
  bool take_cached_block(size_t rounded, cudaStream_t stream, Block& out);
  void empty_cache_locked();
  cudaError_t acquire_event(cudaEvent_t* event);  // a spare event, or a new one (never throws)
  void release_event(cudaEvent_t event);

  int device_;
  mutable std::mutex mutex_;
  std::unordered_map<void*, Block> live_;
  std::multimap<size_t, Block> free_;  // cached blocks by size
  std::vector<cudaEvent_t> spare_events_;
  size_t total_memory_ = 0;  // of the device, queried on first need
  AllocatorStats stats_;
};

// Size class of a request: small requests round up to 512 bytes, larger ones to 2 MiB past 1 MiB.
size_t round_allocation(size_t bytes);

// "512 bytes", "1.5 KiB", "12.5 MiB", "3.2 GiB", "1024.0 TiB".
std::string human_bytes(size_t bytes);

// A device buffer from a CachingAllocator, returned to it when destroyed. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(CachingAllocator& allocator, size_t bytes, cudaStream_t stream, AllocTag tag);
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T = void>
  T* data() const {
    return static_cast<T*>(ptr_);
  }
  size_t size() const { return size_; }  // as requested
  cudaStream_t stream() const { return stream_; }
  explicit operator bool() const { return ptr_ != nullptr; }
  // Returns the block to the allocator now (never throws: a failure is logged).
  void reset() noexcept;

 private:
  CachingAllocator* allocator_ = nullptr;
  void* ptr_ = nullptr;
  size_t size_ = 0;
  cudaStream_t stream_ = nullptr;
};

}  // namespace llm::cuda
