// all_reduce_bench: the latency of one all-reduce of a decode step's residual between the GPUs of this
// host, through NCCL and through the one-shot P2P kernel in each of its tunings (runtime/cuda/
// p2p_all_reduce.h). Each rank captures `--calls` all-reduces in a CUDA graph, as a decode step does, and
// the table gives the graph's time divided by the calls (best of 5 replays, the slower rank).
//
//   all_reduce_bench [--gpus 2] [--counts 4096,16384,32768,65536] [--calls 200]
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "cuda_check.h"
#include "device_collective.h"
#include "nccl_group.h"
#include "p2p_all_reduce.h"

namespace {

// Runs f(rank) on every rank at once, a thread each (NCCL blocks a lone thread driving several ranks).
void on_ranks(int world, const std::function<void(int)>& f) {
  std::vector<std::future<void>> others;
  for (int r = 1; r < world; ++r) others.push_back(std::async(std::launch::async, f, r));
  f(0);
  for (auto& o : others) o.get();
}

// Microseconds per all-reduce of `count` floats, `calls` of them captured in one graph per rank.
double time_all_reduce(int world, size_t count, int calls,
                       const std::function<void(int, float*, size_t, cudaStream_t)>& all_reduce) {
  std::vector<double> per_rank(world);
  std::vector<float*> data(world);
  std::vector<cudaStream_t> streams(world);
  std::vector<cudaGraphExec_t> graphs(world);
  on_ranks(world, [&](int r) {
    LLM_CUDA_CHECK(cudaSetDevice(r));
    LLM_CUDA_CHECK(cudaMalloc(&data[r], count * sizeof(float)));
    LLM_CUDA_CHECK(cudaMemset(data[r], 0, count * sizeof(float)));
    LLM_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[r], cudaStreamNonBlocking));
    cudaGraph_t g = nullptr;
    LLM_CUDA_CHECK(cudaStreamBeginCapture(streams[r], cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < calls; ++i) all_reduce(r, data[r], count, streams[r]);
    LLM_CUDA_CHECK(cudaStreamEndCapture(streams[r], &g));
    LLM_CUDA_CHECK(cudaGraphInstantiate(&graphs[r], g, 0));
    LLM_CUDA_CHECK(cudaGraphDestroy(g));
  });
  on_ranks(world, [&](int r) {
    LLM_CUDA_CHECK(cudaSetDevice(r));
    cudaEvent_t start, stop;
    LLM_CUDA_CHECK(cudaEventCreate(&start));
    LLM_CUDA_CHECK(cudaEventCreate(&stop));
    LLM_CUDA_CHECK(cudaGraphLaunch(graphs[r], streams[r]));  // warm-up
    float best = 1e30f;
    for (int rep = 0; rep < 5; ++rep) {
      LLM_CUDA_CHECK(cudaEventRecord(start, streams[r]));
      LLM_CUDA_CHECK(cudaGraphLaunch(graphs[r], streams[r]));
      LLM_CUDA_CHECK(cudaEventRecord(stop, streams[r]));
      LLM_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      LLM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      best = std::min(best, ms);
    }
    per_rank[r] = 1e3 * best / calls;
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaGraphExecDestroy(graphs[r]);
    cudaStreamDestroy(streams[r]);
    cudaFree(data[r]);
  });
  return *std::max_element(per_rank.begin(), per_rank.end());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"All-reduce latency between the GPUs of this host: NCCL and the P2P kernel's tunings"};
  int world = 2, calls = 200;
  std::vector<size_t> counts = {4096, 16384, 32768, 65536};
  app.add_option("--gpus", world, "ranks, a GPU each")->capture_default_str();
  app.add_option("--counts", counts, "floats per all-reduce (4096: one token of a 4096-wide residual)")->delimiter(',');
  app.add_option("--calls", calls, "all-reduces per graph")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  int present = 0;
  if (cudaGetDeviceCount(&present) != cudaSuccess || present < world) {
    std::printf("all_reduce_bench: needs %d GPUs, %d present\n", world, present);
    return 0;
  }
  std::vector<int> devices;
  for (int r = 0; r < world; ++r) devices.push_back(r);
  const size_t max_count = *std::max_element(counts.begin(), counts.end());

  struct Row {
    std::string name;
    std::function<void(int, float*, size_t, cudaStream_t)> all_reduce;
    std::shared_ptr<void> owner;
  };
  std::vector<Row> rows;
  {
    setenv("LLM_ALL_REDUCE", "nccl", 1);  // this group: NCCL for every size
    auto group = std::make_shared<llm::cuda::NcclGroup>(devices);
    unsetenv("LLM_ALL_REDUCE");
    rows.push_back(
        {llm::cuda::NcclGroup::version(),
         [g = group.get()](int r, float* d, size_t n, cudaStream_t s) { g->rank(r).all_reduce_sum(d, n, s); }, group});
  }
  const std::string why_not = llm::cuda::P2pAllReduce::unavailable_reason(devices);
  if (why_not.empty()) {
    using Tuning = llm::cuda::P2pAllReduce::Tuning;
    for (const int blocks : {4, 8, 16, 32, 64}) {
      Tuning t;
      t.blocks = blocks;
      auto p2p = std::make_shared<llm::cuda::P2pAllReduce>(devices, max_count, t);
      rows.push_back({"P2P (LL lines), " + std::to_string(blocks) + " blocks",
                      [p = p2p.get()](int r, float* d, size_t n, cudaStream_t s) { p->run(r, d, n, s); }, p2p});
    }
  } else {
    std::printf("P2P kernel not available: %s\n", why_not.c_str());
  }

  std::printf("all-reduce of fp32 buffers over %d GPUs, us per call (%d calls captured in a graph, best of 5)\n\n",
              world, calls);
  std::printf("| all-reduce |");
  for (size_t n : counts) std::printf(" %zu floats |", n);
  std::printf("\n|---|");
  for (size_t i = 0; i < counts.size(); ++i) std::printf("---:|");
  std::printf("\n");
  for (const Row& row : rows) {
    std::printf("| %s |", row.name.c_str());
    for (size_t n : counts) std::printf(" %.1f |", time_all_reduce(world, n, calls, row.all_reduce));
    std::printf("\n");
    std::fflush(stdout);
  }
  return 0;
}
