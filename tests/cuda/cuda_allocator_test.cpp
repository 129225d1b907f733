#include "cuda_allocator.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda_check.h"
#include "cuda_test_support.h"
#include "error.h"

namespace llm::cuda {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

// A non-blocking stream for one test, synchronized and destroyed at the end.
class Stream {
 public:
  Stream() { LLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() {
    (void)cudaStreamSynchronize(stream_);
    (void)cudaStreamDestroy(stream_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// Holds a stream at a point until opened: a host function enqueued on the stream waits for the gate, so the
// work queued after it stays pending, deterministically (no timing guess). Opens by itself after 10 s so that
// a broken test cannot hang.
class Gate {
 public:
  void hold(cudaStream_t stream) { LLM_CUDA_CHECK(cudaLaunchHostFunc(stream, &Gate::wait, this)); }
  void open() { open_.store(true); }

 private:
  static void CUDART_CB wait(void* self) {
    auto* gate = static_cast<Gate*>(self);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!gate->open_.load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  std::atomic<bool> open_{false};
};

// Opens a gate when the test leaves its scope, before the streams and the allocator wait for their work.
struct OpenOnExit {
  Gate& gate;
  ~OpenOnExit() { gate.open(); }
};

std::vector<unsigned char> read_back(const void* device_ptr, size_t bytes) {
  std::vector<unsigned char> host(bytes);
  LLM_CUDA_CHECK(cudaMemcpy(host.data(), device_ptr, bytes, cudaMemcpyDeviceToHost));
  return host;
}

bool all_equal(const std::vector<unsigned char>& bytes, unsigned char value) {
  return std::all_of(bytes.begin(), bytes.end(), [value](unsigned char b) { return b == value; });
}

// --- no GPU needed ---

TEST(CudaAllocator, RoundAllocationSizeClasses) {
  EXPECT_EQ(round_allocation(0), 512u);
  EXPECT_EQ(round_allocation(1), 512u);
  EXPECT_EQ(round_allocation(512), 512u);
  EXPECT_EQ(round_allocation(513), 1024u);
  EXPECT_EQ(round_allocation(kMiB - 1), kMiB);
  EXPECT_EQ(round_allocation(kMiB), 2 * kMiB);
  EXPECT_EQ(round_allocation(2 * kMiB), 2 * kMiB);
  EXPECT_EQ(round_allocation(2 * kMiB + 1), 4 * kMiB);
  EXPECT_EQ(round_allocation(3 * kMiB), 4 * kMiB);
  EXPECT_THROW(round_allocation(std::numeric_limits<size_t>::max()), Error);
}

TEST(CudaAllocator, NamesAndSizesReadWell) {
  EXPECT_STREQ(alloc_tag_name(AllocTag::Weights), "weights");
  EXPECT_STREQ(alloc_tag_name(AllocTag::KvCache), "KV cache");
  EXPECT_STREQ(alloc_tag_name(AllocTag::Activations), "activations");
  EXPECT_STREQ(alloc_tag_name(AllocTag::Workspace), "workspace");
  EXPECT_STREQ(alloc_tag_name(AllocTag::Other), "other");
  EXPECT_EQ(human_bytes(0), "0 bytes");
  EXPECT_EQ(human_bytes(512), "512 bytes");
  EXPECT_EQ(human_bytes(1536), "1.5 KiB");
  EXPECT_EQ(human_bytes(2 * kMiB), "2.0 MiB");
  EXPECT_EQ(human_bytes(12 * kMiB + kMiB / 2), "12.5 MiB");
  EXPECT_EQ(human_bytes(size_t{80} << 30), "80.0 GiB");
  EXPECT_EQ(human_bytes(size_t{1} << 50), "1024.0 TiB");
}

TEST(CudaAllocator, UnusedAllocatorNeedsNoGpu) {
  CachingAllocator allocator;  // constructing, reading and destroying an idle allocator touch no CUDA API
  EXPECT_EQ(allocator.stats().cuda_malloc_calls, 0u);
  EXPECT_EQ(allocator.stats_line(), "allocator: 0 bytes in use, 0 bytes cached, peak 0 bytes, 0 cudaMalloc calls");
  EXPECT_NO_THROW(allocator.deallocate(nullptr));
  EXPECT_NO_THROW(allocator.empty_cache());
}

// --- GPU ---

TEST(CudaAllocator, ZeroByteAndTinyRequestsGiveDistinctUsablePointers) {
  LLM_REQUIRE_GPU();
  Stream stream;
  CachingAllocator allocator;
  const size_t sizes[] = {0, 0, 1, 1, 7, 511, 512};
  std::vector<void*> ptrs;
  for (size_t size : sizes) {
    void* p = allocator.allocate(size, stream.get(), AllocTag::Activations);
    ASSERT_NE(p, nullptr) << size << " bytes";
    ptrs.push_back(p);
  }
  EXPECT_EQ(std::set<void*>(ptrs.begin(), ptrs.end()).size(), ptrs.size()) << "pointers must be distinct";
  EXPECT_EQ(allocator.stats().bytes_in_use, ptrs.size() * 512);
  // Every block holds its whole size class: fill each with its own byte and read them all back.
  for (size_t i = 0; i < ptrs.size(); ++i) {
    LLM_CUDA_CHECK(cudaMemsetAsync(ptrs[i], static_cast<int>(i + 1), 512, stream.get()));
  }
  LLM_CUDA_CHECK(cudaMemsetAsync(ptrs[0], 0, 0, stream.get()));  // a zero-byte operation on a zero-byte block
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  for (size_t i = 0; i < ptrs.size(); ++i) {
    EXPECT_TRUE(all_equal(read_back(ptrs[i], 512), static_cast<unsigned char>(i + 1))) << "block " << i;
  }
  for (void* p : ptrs) allocator.deallocate(p);
  EXPECT_EQ(allocator.stats().bytes_in_use, 0u);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(CudaAllocator, ReusesAFreedBlockOnTheSameStream) {
  LLM_REQUIRE_GPU();
  Stream stream;
  CachingAllocator allocator;
  void* p = allocator.allocate(1000, stream.get(), AllocTag::Activations);
  const uint64_t mallocs = allocator.stats().cuda_malloc_calls;
  EXPECT_EQ(mallocs, 1u);
  allocator.deallocate(p);
  EXPECT_EQ(allocator.stats().bytes_cached, 1024u);
  void* q = allocator.allocate(1000, stream.get(), AllocTag::Activations);
  EXPECT_EQ(q, p);
  EXPECT_EQ(allocator.stats().cuda_malloc_calls, mallocs);
  EXPECT_EQ(allocator.stats().bytes_cached, 0u);
  allocator.deallocate(q);

  // Large blocks too, within the same size class.
  void* big = allocator.allocate(5 * kMiB, stream.get(), AllocTag::Workspace);
  allocator.deallocate(big);
  void* big2 = allocator.allocate(6 * kMiB - 3, stream.get(), AllocTag::Workspace);
  EXPECT_EQ(big2, big);
  allocator.deallocate(big2);
  EXPECT_EQ(allocator.stats().cuda_malloc_calls, 2u);
  EXPECT_EQ(allocator.stats().allocations, 4u);
}

TEST(CudaAllocator, DoesNotHandAHugeBlockToATinyRequest) {
  LLM_REQUIRE_GPU();
  Stream stream;
  CachingAllocator allocator;
  void* big = allocator.allocate(64 * kMiB, stream.get(), AllocTag::Workspace);
  allocator.deallocate(big);
  void* small = allocator.allocate(512, stream.get(), AllocTag::Activations);
  EXPECT_NE(small, big);
  void* half = allocator.allocate(16 * kMiB, stream.get(), AllocTag::Activations);
  EXPECT_NE(half, big);
  EXPECT_EQ(allocator.stats().cuda_malloc_calls, 3u);
  EXPECT_EQ(allocator.stats().bytes_cached, 64 * kMiB);
  allocator.deallocate(small);
  allocator.deallocate(half);
}

TEST(CudaAllocator, SameStreamReusesAtOnceWhileWorkIsStillQueued) {
  LLM_REQUIRE_GPU();
  Gate gate;
  Stream a;
  CachingAllocator allocator;
  OpenOnExit release{gate};
  constexpr size_t n = 256 * 1024;
  void* p = allocator.allocate(n, a.get(), AllocTag::Activations);
  gate.hold(a.get());
  LLM_CUDA_CHECK(cudaMemsetAsync(p, 0xAA, n, a.get()));  // pending behind the gate
  allocator.deallocate(p);
  ASSERT_EQ(cudaStreamQuery(a.get()), cudaErrorNotReady);
  (void)cudaGetLastError();
  void* q = allocator.allocate(n, a.get(), AllocTag::Activations);
  EXPECT_EQ(q, p) << "stream order protects same-stream reuse: no need for a new block";
  LLM_CUDA_CHECK(cudaMemsetAsync(q, 0x11, n, a.get()));  // runs after the old write
  gate.open();
  LLM_CUDA_CHECK(cudaStreamSynchronize(a.get()));
  EXPECT_TRUE(all_equal(read_back(q, n), 0x11));
  allocator.deallocate(q);
  EXPECT_EQ(allocator.stats().cuda_malloc_calls, 1u);
}

// A naive allocator hands the block freed on A to B at once; A's pending write then lands on B's data.
TEST(CudaAllocator, AnotherStreamDoesNotGetABlockWithPendingWork) {
  LLM_REQUIRE_GPU();
  Gate gate;
  Stream a, b;
  CachingAllocator allocator;
  OpenOnExit release{gate};
  constexpr size_t n = 256 * 1024;
  void* p = allocator.allocate(n, a.get(), AllocTag::Activations);
  gate.hold(a.get());
  LLM_CUDA_CHECK(cudaMemsetAsync(p, 0xAA, n, a.get()));  // pending behind the gate
  allocator.deallocate(p);
  ASSERT_EQ(cudaStreamQuery(a.get()), cudaErrorNotReady);
  (void)cudaGetLastError();

  void* q = allocator.allocate(n, b.get(), AllocTag::Activations);
  EXPECT_NE(q, p) << "the block freed on A still has work queued on A";
  LLM_CUDA_CHECK(cudaMemsetAsync(q, 0x11, n, b.get()));
  LLM_CUDA_CHECK(cudaStreamSynchronize(b.get()));
  gate.open();  // now A's write runs
  LLM_CUDA_CHECK(cudaStreamSynchronize(a.get()));
  EXPECT_TRUE(all_equal(read_back(q, n), 0x11)) << "A's pending write clobbered B's data";
  allocator.deallocate(q);
  EXPECT_EQ(allocator.stats().cuda_malloc_calls, 2u);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// The same with a finished block from A in the cache, one size class up: B gets that one, without a
// cudaMalloc (which the CUDA guide lists among the calls that may serialize streams) while A is held.
TEST(CudaAllocator, AnotherStreamSkipsThePendingBlockForAFinishedOne) {
  LLM_REQUIRE_GPU();
  Gate gate;
  Stream a, b;
  CachingAllocator allocator;
  OpenOnExit release{gate};
  constexpr size_t n = 256 * 1024;
  void* finished = allocator.allocate(2 * n, a.get(), AllocTag::Activations);
  void* p = allocator.allocate(n, a.get(), AllocTag::Activations);
  allocator.deallocate(finished);
  LLM_CUDA_CHECK(cudaStreamSynchronize(a.get()));  // its event has completed
  gate.hold(a.get());
  LLM_CUDA_CHECK(cudaMemsetAsync(p, 0xAA, n, a.get()));  // pending behind the gate
  allocator.deallocate(p);
  ASSERT_EQ(cudaStreamQuery(a.get()), cudaErrorNotReady);
  (void)cudaGetLastError();

  void* q = allocator.allocate(n, b.get(), AllocTag::Activations);
  EXPECT_NE(q, p) << "the best fit, freed on A, still has work queued on A";
  EXPECT_EQ(q, finished) << "the next fit's work on A has finished";
  EXPECT_EQ(allocator.stats().cuda_malloc_calls, 2u);
  LLM_CUDA_CHECK(cudaMemsetAsync(q, 0x11, n, b.get()));
  LLM_CUDA_CHECK(cudaStreamSynchronize(b.get()));
  EXPECT_EQ(cudaStreamQuery(a.get()), cudaErrorNotReady) << "B finished without waiting for A";
  (void)cudaGetLastError();
  gate.open();  // now A's write runs
  LLM_CUDA_CHECK(cudaStreamSynchronize(a.get()));
  EXPECT_TRUE(all_equal(read_back(q, n), 0x11)) << "A's pending write clobbered B's data";
  allocator.deallocate(q);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(CudaAllocator, AnotherStreamReusesTheBlockOnceTheWorkIsDone) {
  LLM_REQUIRE_GPU();
  Stream a, b;
  CachingAllocator allocator;
  constexpr size_t n = 256 * 1024;
  void* p = allocator.allocate(n, a.get(), AllocTag::Activations);
  LLM_CUDA_CHECK(cudaMemsetAsync(p, 0xAA, n, a.get()));
  allocator.deallocate(p);
  LLM_CUDA_CHECK(cudaStreamSynchronize(a.get()));
  void* q = allocator.allocate(n, b.get(), AllocTag::Activations);
  EXPECT_EQ(q, p) << "the work on A has finished: the block can go to B";
  EXPECT_EQ(allocator.stats().cuda_malloc_calls, 1u);
  LLM_CUDA_CHECK(cudaMemsetAsync(q, 0x22, n, b.get()));
  LLM_CUDA_CHECK(cudaStreamSynchronize(b.get()));
  EXPECT_TRUE(all_equal(read_back(q, n), 0x22));
  allocator.deallocate(q);
}

void expect_out_of_memory_message(const std::string& message, size_t rounded, const char* tag) {
  EXPECT_NE(message.find("CUDA out of memory"), std::string::npos) << message;
  EXPECT_NE(message.find(std::to_string(rounded)), std::string::npos) << message;
  EXPECT_NE(message.find("free of"), std::string::npos) << message;
  EXPECT_NE(message.find("total"), std::string::npos) << message;
  EXPECT_NE(message.find(tag), std::string::npos) << message;
  EXPECT_NE(message.find("device 0"), std::string::npos) << message;
}

TEST(CudaAllocator, AbsurdRequestFailsWithAClearMessageAndLeavesTheAllocatorUsable) {
  LLM_REQUIRE_GPU();
  Stream stream;
  CachingAllocator allocator;
  const size_t absurd = size_t{1} << 50;
  try {
    allocator.allocate(absurd, stream.get(), AllocTag::KvCache);
    FAIL() << "allocating 1 PiB succeeded";
  } catch (const Error& e) {
    expect_out_of_memory_message(e.what(), absurd, "KV cache");
    EXPECT_NE(std::string(e.what()).find("1024.0 TiB"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_THROW(allocator.allocate(std::numeric_limits<size_t>::max(), stream.get(), AllocTag::Other), Error);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  void* p = allocator.allocate(4096, stream.get(), AllocTag::Activations);
  ASSERT_NE(p, nullptr);
  LLM_CUDA_CHECK(cudaMemsetAsync(p, 0, 4096, stream.get()));
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  allocator.deallocate(p);
  EXPECT_EQ(allocator.stats().bytes_in_use, 0u);
}

// A request under the device's total but over what is free reaches cudaMalloc, which fails: the allocator
// empties its cache, retries, and then reports the failure.
TEST(CudaAllocator, RealOutOfMemoryEmptiesTheCacheRetriesAndExplains) {
  LLM_REQUIRE_GPU();
  Stream stream;
  CachingAllocator allocator;
  void* cached = allocator.allocate(8 * kMiB, stream.get(), AllocTag::Activations);
  allocator.deallocate(cached);
  ASSERT_EQ(allocator.stats().bytes_cached, 8 * kMiB);
  size_t free_bytes = 0, total_bytes = 0;
  LLM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const size_t request = total_bytes / (2 * kMiB) * (2 * kMiB);  // the context itself holds some memory
  ASSERT_GT(request, free_bytes);
  try {
    void* p = allocator.allocate(request, stream.get(), AllocTag::Weights);
    allocator.deallocate(p);
    FAIL() << "allocating the whole device succeeded";
  } catch (const Error& e) {
    expect_out_of_memory_message(e.what(), request, "weights");
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  const AllocatorStats s = allocator.stats();
  EXPECT_EQ(s.bytes_cached, 0u) << "the cache is emptied before the retry";
  EXPECT_EQ(s.cuda_free_calls, 1u);
  EXPECT_EQ(s.bytes_in_use, 0u);
  void* p = allocator.allocate(8 * kMiB, stream.get(), AllocTag::Activations);
  LLM_CUDA_CHECK(cudaMemsetAsync(p, 0, 8 * kMiB, stream.get()));
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  allocator.deallocate(p);
}

TEST(CudaAllocator, EmptyCacheReturnsMemoryToCuda) {
  LLM_REQUIRE_GPU();
  Stream stream;
  CachingAllocator allocator;
  std::vector<void*> ptrs;
  for (size_t size : {size_t{4096}, 3 * kMiB, 256 * kMiB}) {
    ptrs.push_back(allocator.allocate(size, stream.get(), AllocTag::Workspace));
    LLM_CUDA_CHECK(cudaMemsetAsync(ptrs.back(), 1, size, stream.get()));
  }
  for (void* p : ptrs) allocator.deallocate(p);  // the memsets may still be running
  const AllocatorStats before = allocator.stats();
  EXPECT_EQ(before.bytes_cached, 4096 + 4 * kMiB + 256 * kMiB);
  EXPECT_EQ(before.bytes_in_use, 0u);
  size_t free_before = 0, free_after = 0, total = 0;
  LLM_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
  allocator.empty_cache();
  LLM_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
  const AllocatorStats after = allocator.stats();
  EXPECT_EQ(after.bytes_cached, 0u);
  EXPECT_EQ(after.cuda_free_calls, before.cuda_free_calls + 3);
  EXPECT_GE(free_after, free_before + 200 * kMiB) << "the device got the memory back";
  allocator.empty_cache();  // nothing left: no-op
  EXPECT_EQ(allocator.stats().cuda_free_calls, after.cuda_free_calls);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(CudaAllocator, DecodeLoopDoesNotGrow) {
  LLM_REQUIRE_GPU();
  Stream stream;
  CachingAllocator allocator;
  void* weights = allocator.allocate(64 * kMiB, stream.get(), AllocTag::Weights);  // held throughout
  const AllocatorStats baseline = allocator.stats();
  // A decode step's buffers, deliberately not sorted, with repeats and a zero-byte one.
  const size_t step_sizes[] = {16384, 4096, 3 * kMiB, 4096, 0, 600 * 1024, 12288, 5 * kMiB + 17, 100};
  uint64_t mallocs_after_first_step = 0;
  for (int step = 0; step < 1000; ++step) {
    std::vector<void*> ptrs;
    for (size_t size : step_sizes) ptrs.push_back(allocator.allocate(size, stream.get(), AllocTag::Activations));
    LLM_CUDA_CHECK(cudaMemsetAsync(ptrs[0], step & 0xff, step_sizes[0], stream.get()));
    if (step % 2) std::reverse(ptrs.begin(), ptrs.end());  // free order varies too
    for (void* p : ptrs) allocator.deallocate(p);
    if (step == 0) mallocs_after_first_step = allocator.stats().cuda_malloc_calls;
    ASSERT_EQ(allocator.stats().cuda_malloc_calls, mallocs_after_first_step) << "step " << step;
  }
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  const AllocatorStats s = allocator.stats();
  EXPECT_EQ(mallocs_after_first_step, baseline.cuda_malloc_calls + std::size(step_sizes));
  EXPECT_EQ(s.bytes_in_use, baseline.bytes_in_use);
  EXPECT_EQ(s.bytes_by_tag[static_cast<int>(AllocTag::Activations)], 0u);
  EXPECT_EQ(s.bytes_by_tag[static_cast<int>(AllocTag::Weights)], 64 * kMiB);
  EXPECT_EQ(s.allocations, 1 + 1000 * std::size(step_sizes));
  EXPECT_EQ(s.cuda_free_calls, 0u);
  allocator.deallocate(weights);
}

TEST(CudaAllocator, ConcurrentAllocateAndFreeKeepConsistentStats) {
  LLM_REQUIRE_GPU();
  constexpr int kThreads = 4, kIterations = 1000;
  std::vector<Stream> streams(kThreads);
  CachingAllocator allocator;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        std::mt19937 rng(1234u + static_cast<unsigned>(t));
        std::uniform_int_distribution<size_t> size_dist(0, 64 * 1024);
        std::vector<std::pair<void*, size_t>> held;
        cudaStream_t stream = streams[static_cast<size_t>(t)].get();
        for (int i = 0; i < kIterations; ++i) {
          const size_t size = size_dist(rng);
          void* p = allocator.allocate(size, stream, static_cast<AllocTag>(i % 5));
          if (i % 16 == 0 && size > 0) LLM_CUDA_CHECK(cudaMemsetAsync(p, 0, size, stream));
          held.emplace_back(p, size);
          if (held.size() > 8 || rng() % 2) {
            const size_t victim = rng() % held.size();
            allocator.deallocate(held[victim].first);
            held.erase(held.begin() + static_cast<std::ptrdiff_t>(victim));
          }
        }
        for (auto& h : held) allocator.deallocate(h.first);
        LLM_CUDA_CHECK(cudaStreamSynchronize(stream));
      } catch (const std::exception& e) {
        ++failures;
        ADD_FAILURE() << "thread " << t << ": " << e.what();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  const AllocatorStats s = allocator.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  for (size_t tag_bytes : s.bytes_by_tag) EXPECT_EQ(tag_bytes, 0u);
  EXPECT_EQ(s.allocations, static_cast<uint64_t>(kThreads * kIterations));
  EXPECT_GT(s.cuda_malloc_calls, 0u);
  EXPECT_LT(s.cuda_malloc_calls, s.allocations) << "blocks were reused";
  EXPECT_GT(s.bytes_cached, 0u);
  EXPECT_GT(s.peak_bytes_in_use, 0u);
  allocator.empty_cache();
  const AllocatorStats e = allocator.stats();
  EXPECT_EQ(e.bytes_cached, 0u);
  EXPECT_EQ(e.cuda_free_calls, e.cuda_malloc_calls);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(CudaAllocator, DoubleFreeAndForeignPointersAreErrors) {
  LLM_REQUIRE_GPU();
  CachingAllocator allocator;
  void* p = allocator.allocate(100, nullptr, AllocTag::Other);
  allocator.deallocate(p);
  try {
    allocator.deallocate(p);
    FAIL() << "double free was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format("{}", p)), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("double free"), std::string::npos) << e.what();
  }
  int local = 0;
  EXPECT_THROW(allocator.deallocate(&local), Error);
  EXPECT_NO_THROW(allocator.deallocate(nullptr));
  const AllocatorStats s = allocator.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.bytes_cached, 512u);
}

TEST(CudaAllocator, StatsTrackTagsPeakAndReadAsOneLine) {
  LLM_REQUIRE_GPU();
  CachingAllocator allocator;
  void* w = allocator.allocate(10 * kMiB, nullptr, AllocTag::Weights);      // 10 MiB
  void* kv = allocator.allocate(3 * kMiB / 2, nullptr, AllocTag::KvCache);  // 2 MiB
  void* a = allocator.allocate(kMiB / 2, nullptr, AllocTag::Activations);   // 0.5 MiB
  AllocatorStats s = allocator.stats();
  EXPECT_EQ(s.bytes_by_tag[static_cast<int>(AllocTag::Weights)], 10 * kMiB);
  EXPECT_EQ(s.bytes_by_tag[static_cast<int>(AllocTag::KvCache)], 2 * kMiB);
  EXPECT_EQ(s.bytes_by_tag[static_cast<int>(AllocTag::Activations)], kMiB / 2);
  EXPECT_EQ(s.bytes_in_use, 12 * kMiB + kMiB / 2);
  allocator.deallocate(kv);
  s = allocator.stats();
  EXPECT_EQ(s.bytes_in_use, 10 * kMiB + kMiB / 2);
  EXPECT_EQ(s.peak_bytes_in_use, 12 * kMiB + kMiB / 2);
  EXPECT_EQ(allocator.stats_line(), "allocator: 10.5 MiB in use, 2.0 MiB cached, peak 12.5 MiB, 3 cudaMalloc calls");
  allocator.deallocate(w);
  allocator.deallocate(a);
}

TEST(CudaAllocator, DestructorFreesBlocksStillInUse) {
  LLM_REQUIRE_GPU();
  size_t free_before = 0, free_after = 0, total = 0;
  LLM_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
  {
    CachingAllocator allocator;
    (void)allocator.allocate(128 * kMiB, nullptr, AllocTag::Other);  // leaked on purpose: logs a warning
    allocator.deallocate(allocator.allocate(128 * kMiB, nullptr, AllocTag::Other));
  }
  LLM_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
  EXPECT_GE(free_after + 16 * kMiB, free_before) << "the allocator returned its memory";
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(CudaAllocator, DeviceBufferReturnsItsBlock) {
  LLM_REQUIRE_GPU();
  Stream stream;
  CachingAllocator allocator;
  {
    DeviceBuffer empty;
    EXPECT_FALSE(empty);
    DeviceBuffer buffer(allocator, 1000 * sizeof(float), stream.get(), AllocTag::Activations);
    ASSERT_TRUE(buffer);
    EXPECT_NE(buffer.data<float>(), nullptr);
    EXPECT_EQ(buffer.size(), 1000 * sizeof(float));
    EXPECT_EQ(buffer.stream(), stream.get());
    LLM_CUDA_CHECK(cudaMemsetAsync(buffer.data(), 0, buffer.size(), stream.get()));
    EXPECT_EQ(allocator.stats().bytes_in_use, 4096u);

    DeviceBuffer moved(std::move(buffer));
    EXPECT_FALSE(buffer);  // NOLINT(bugprone-use-after-move): a moved-from buffer is empty
    EXPECT_TRUE(moved);
    EXPECT_EQ(allocator.stats().bytes_in_use, 4096u);

    DeviceBuffer other(allocator, 0, stream.get(), AllocTag::Workspace);
    EXPECT_EQ(allocator.stats().bytes_in_use, 4096u + 512u);
    other = std::move(moved);  // other's zero-byte block goes back
    EXPECT_EQ(allocator.stats().bytes_in_use, 4096u);
    EXPECT_EQ(other.size(), 1000 * sizeof(float));
    other.reset();
    EXPECT_FALSE(other);
    EXPECT_EQ(allocator.stats().bytes_in_use, 0u);
    DeviceBuffer last(allocator, 64, stream.get(), AllocTag::Workspace);
  }
  EXPECT_EQ(allocator.stats().bytes_in_use, 0u);
  EXPECT_EQ(allocator.stats().cuda_malloc_calls, 2u);
}

}  // namespace
}  // namespace llm::cuda
