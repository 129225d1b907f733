// kernel_trace: every kernel's start and end on the GPU, for a program that knows nothing of it.
//
//   KERNEL_TRACE_OUT=trace.csv LD_PRELOAD=build/lib/libkernel_trace.so build/bin/gpu_decode_bench ...
//   python3 tools/kernel_trace/summarize.py trace.csv
//
// The device machine has no Nsight Systems, and Nsight Compute runs kernels one at a time, so neither shows
// where a decode step's time goes between kernels (launch gaps, programmatic dependent launch overlap).
// CUPTI's activity API does: it timestamps each kernel, graph-launched ones included, without serialising
// them. Loaded before the program, this library turns it on at load and writes one CSV row a kernel at exit.
#include <cupti.h>
#include <cxxabi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct KernelRecord {
  std::string name;
  uint64_t start, end;
  uint32_t correlation, graph, stream;
  int64_t graph_node;
  int grid, block;
};

std::mutex g_mutex;
std::vector<KernelRecord>* g_records = nullptr;  // leaked on purpose: exit order of statics is not ours
pid_t g_pid = 0;  // children forked by the program (plugin probes) exit without writing over our file
constexpr size_t kBufferBytes = 8u << 20;

#define KT_CHECK(call)                                                             \
  do {                                                                             \
    CUptiResult r_ = (call);                                                       \
    if (r_ != CUPTI_SUCCESS) {                                                     \
      const char* s_ = nullptr;                                                    \
      cuptiGetResultString(r_, &s_);                                               \
      std::fprintf(stderr, "kernel_trace: %s failed: %s\n", #call, s_ ? s_ : "?"); \
    }                                                                              \
  } while (0)

std::string demangle(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : name;
  std::free(d);
  return s;
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  std::lock_guard<std::mutex> lock(g_mutex);
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
    g_records->push_back({demangle(k->name), k->start, k->end, k->correlationId, k->graphId, k->streamId,
                          static_cast<int64_t>(k->graphNodeId), k->gridX * k->gridY * k->gridZ,
                          k->blockX * k->blockY * k->blockZ});
  }
  std::free(buffer);
}

std::string csv_quoted(const std::string& s) {
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

__attribute__((constructor)) void start_trace() {
  if (!std::getenv("KERNEL_TRACE_OUT")) return;
  g_records = new std::vector<KernelRecord>();
  g_pid = getpid();
  KT_CHECK(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
  KT_CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
}

__attribute__((destructor)) void write_trace() {
  const char* out = std::getenv("KERNEL_TRACE_OUT");
  if (!out || !g_records || getpid() != g_pid) return;
  KT_CHECK(cuptiActivityFlushAll(1));
  if (g_records->empty()) {
    std::fprintf(stderr, "kernel_trace: no kernels recorded; %s not written\n", out);
    return;
  }
  std::FILE* f = std::fopen(out, "w");
  if (!f) {
    std::fprintf(stderr, "kernel_trace: cannot write %s: %s\n", out, std::strerror(errno));
    return;
  }
  std::fprintf(f, "start_ns,end_ns,correlation,graph,graph_node,stream,grid,block,name\n");
  std::lock_guard<std::mutex> lock(g_mutex);
  for (const KernelRecord& r : *g_records)
    std::fprintf(f, "%llu,%llu,%u,%u,%lld,%u,%d,%d,%s\n", static_cast<unsigned long long>(r.start),
                 static_cast<unsigned long long>(r.end), r.correlation, r.graph, static_cast<long long>(r.graph_node),
                 r.stream, r.grid, r.block, csv_quoted(r.name).c_str());
  std::fclose(f);
  std::fprintf(stderr, "kernel_trace: %zu kernels written to %s\n", g_records->size(), out);
}

}  // namespace
