// A caching, stream-ordered device allocator with size classes. The project this one descends from died
// with "CUDA error when allocating 0 MB memory": here zero-byte and tiny requests are valid, freed
// blocks are reused without cudaFree, and running out of memory first empties the cache and retries once,
// then fails with the request size, free and total memory, and what the memory was for.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
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
  // work has finished.
  void deallocate(void* ptr);
  // Returns every cached (free) block to CUDA.
  void empty_cache();
  AllocatorStats stats() const;
  // One line: in use, cached, peak, cudaMalloc calls.
  std::string stats_line() const;

 private:
  struct Block {
    void* ptr;
    size_t size;
    cudaStream_t stream;
    AllocTag tag;
    cudaEvent_t ready = nullptr;  // recorded at free when the block is handed to another stream
  };
  void* cuda_malloc_or_throw(size_t size, AllocTag tag);

  int device_;
  mutable std::mutex mutex_;
  std::unordered_map<void*, Block> live_;
  std::vector<Block> free_;  // cached blocks
  AllocatorStats stats_;
};

// Size class of a request: small requests round up to 512 bytes, larger ones to 2 MiB past 1 MiB.
size_t round_allocation(size_t bytes);

}  // namespace llm::cuda
