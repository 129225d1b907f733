// dram_sampler: the DRAM's bytes over time, beside kernel_trace's kernel stamps, in the same process.
//
//   KERNEL_TRACE_OUT=trace.csv KERNEL_TRACE_DRAM_OUT=dram.csv LD_PRELOAD=build/lib/libkernel_trace.so ...
//   python3 tools/kernel_trace/summarize.py trace.csv --dram dram.csv
//
// Kernel stamps say when each kernel ran, not when the DRAM was busy: with programmatic dependent launch a
// product's blocks load their weights long before its stamps say it has work, and a kernel boundary is
// costly only where the DRAM goes idle around it. CUPTI's PM sampling reads the GPU's performance monitors
// every KERNEL_TRACE_DRAM_NS nanoseconds (default 1000) without stopping any kernel, so the bytes each
// interval read and wrote can be laid over the kernel stamps (both on CUPTI's clock). Samples are taken
// for KERNEL_TRACE_DRAM_LAUNCHES graph launches (default 1) from the KERNEL_TRACE_DRAM_FROM-th one
// (default 200): a window of decode steps, not the whole program, whose samples would be gigabytes.
// KERNEL_TRACE_DRAM_METRICS (comma-separated) replaces the default dram__bytes_read.sum and
// dram__bytes_write.sum. Only the window's first KERNEL_TRACE_DRAM_SAMPLES samples (default 20,000: 20 ms at
// 1 us) are kept: the window runs on until the stop reaches the GPU, usually longer than that. Nothing here stops the
// program: a failure is a line on stderr and no file.
#include <cuda.h>
#include <cupti.h>
#include <cupti_pmsampling.h>
#include <cupti_profiler_host.h>
#include <cupti_profiler_target.h>
#include <cupti_target.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

// A CUPTI parameter block: zeroed, its size set (CUPTI's way of versioning them).
template <typename T>
T params(size_t size) {
  T p{};
  p.structSize = size;
  return p;
}
#define DS_PARAMS(type, name) type name = params<type>(type##_STRUCT_SIZE)

bool ok(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return true;
  const char* s = nullptr;
  cuptiGetResultString(r, &s);
  std::fprintf(stderr, "dram_sampler: %s failed: %s\n", what, s ? s : "?");
  return false;
}
#define DS_OK(call) ok((call), #call)

uint64_t env_or(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v, &end, 10);
  if (*end) {
    std::fprintf(stderr, "dram_sampler: %s=%s is not a whole number; using %llu\n", name, v,
                 static_cast<unsigned long long>(fallback));
    return fallback;
  }
  return n;
}

std::atomic<uint64_t> g_graph_launches{0};
pid_t g_pid = 0;

void CUPTIAPI on_runtime_api(void*, CUpti_CallbackDomain, CUpti_CallbackId, const void* data) {
  if (static_cast<const CUpti_CallbackData*>(data)->callbackSite == CUPTI_API_EXIT) ++g_graph_launches;
}

struct Sample {
  uint64_t start, end;
  std::vector<double> values;
};

class Sampler {
 public:
  bool set_up() {
    samples_ = env_or("KERNEL_TRACE_DRAM_SAMPLES", 20000);
    if (samples_ < 1 || samples_ > 10000000) {
      std::fprintf(stderr, "dram_sampler: KERNEL_TRACE_DRAM_SAMPLES=%llu: expected 1 to 10,000,000\n",
                   static_cast<unsigned long long>(samples_));
      return false;
    }
    if (cuInit(0) != CUDA_SUCCESS) {
      std::fprintf(stderr, "dram_sampler: cuInit failed\n");
      return false;
    }
    DS_PARAMS(CUpti_Profiler_Initialize_Params, init);
    if (!DS_OK(cuptiProfilerInitialize(&init))) return false;
    DS_PARAMS(CUpti_Device_GetChipName_Params, chip);
    chip.deviceIndex = 0;
    if (!DS_OK(cuptiDeviceGetChipName(&chip))) return false;
    DS_PARAMS(CUpti_PmSampling_GetCounterAvailability_Params, avail);
    avail.deviceIndex = 0;
    if (!DS_OK(cuptiPmSamplingGetCounterAvailability(&avail))) return false;
    availability_.resize(avail.counterAvailabilityImageSize);
    avail.pCounterAvailabilityImage = availability_.data();
    if (!DS_OK(cuptiPmSamplingGetCounterAvailability(&avail))) return false;
    DS_PARAMS(CUpti_Profiler_Host_Initialize_Params, host);
    host.profilerType = CUPTI_PROFILER_TYPE_PM_SAMPLING;
    host.pChipName = chip.pChipName;
    host.pCounterAvailabilityImage = availability_.data();
    if (!DS_OK(cuptiProfilerHostInitialize(&host))) return false;
    host_ = host.pHostObject;
    if (!choose_metrics(chip.pChipName)) return false;

    DS_PARAMS(CUpti_Profiler_Host_ConfigAddMetrics_Params, add);
    add.pHostObject = host_;
    add.ppMetricNames = metrics_.data();
    add.numMetrics = metrics_.size();
    if (!DS_OK(cuptiProfilerHostConfigAddMetrics(&add))) return false;
    DS_PARAMS(CUpti_Profiler_Host_GetConfigImageSize_Params, size);
    size.pHostObject = host_;
    if (!DS_OK(cuptiProfilerHostGetConfigImageSize(&size))) return false;
    config_.resize(size.configImageSize);
    DS_PARAMS(CUpti_Profiler_Host_GetConfigImage_Params, image);
    image.pHostObject = host_;
    image.pConfigImage = config_.data();
    image.configImageSize = config_.size();
    if (!DS_OK(cuptiProfilerHostGetConfigImage(&image))) return false;
    DS_PARAMS(CUpti_Profiler_Host_GetNumOfPasses_Params, passes);
    passes.pConfigImage = config_.data();
    passes.configImageSize = config_.size();
    if (!DS_OK(cuptiProfilerHostGetNumOfPasses(&passes))) return false;
    if (passes.numOfPasses != 1) {
      std::fprintf(stderr, "dram_sampler: the metrics need %zu passes; sampling takes one\n", passes.numOfPasses);
      return false;
    }

    DS_PARAMS(CUpti_PmSampling_Enable_Params, enable);
    enable.deviceIndex = 0;
    if (!DS_OK(cuptiPmSamplingEnable(&enable))) return false;
    sampler_ = enable.pPmSamplingObject;
    // The shortest interval the monitors take: the asked one, else the next of these that works.
    const uint64_t asked = env_or("KERNEL_TRACE_DRAM_NS", 1000);
    for (uint64_t ns : {asked, uint64_t{2000}, uint64_t{5000}, uint64_t{10000}}) {
      if (ns < asked) continue;
      DS_PARAMS(CUpti_PmSampling_SetConfig_Params, set);
      set.pPmSamplingObject = sampler_;
      set.configSize = config_.size();
      set.pConfig = config_.data();
      set.hardwareBufferSize = size_t{512} << 20;
      set.samplingInterval = ns;
      set.triggerMode = CUPTI_PM_SAMPLING_TRIGGER_MODE_GPU_TIME_INTERVAL;
      set.hwBufferAppendMode = CUPTI_PM_SAMPLING_HARDWARE_BUFFER_APPEND_MODE_KEEP_OLDEST;
      if (DS_OK(cuptiPmSamplingSetConfig(&set))) {
        interval_ns_ = ns;
        break;
      }
    }
    if (!interval_ns_) return false;
    DS_PARAMS(CUpti_PmSampling_GetCounterDataSize_Params, data);
    data.pPmSamplingObject = sampler_;
    data.numMetrics = metrics_.size();
    data.pMetricNames = metrics_.data();
    data.maxSamples = static_cast<uint32_t>(samples_);
    if (!DS_OK(cuptiPmSamplingGetCounterDataSize(&data))) return false;
    image_.resize(data.counterDataSize);
    DS_PARAMS(CUpti_PmSampling_CounterDataImage_Initialize_Params, init_image);
    init_image.pPmSamplingObject = sampler_;
    init_image.counterDataSize = image_.size();
    init_image.pCounterData = image_.data();
    if (!DS_OK(cuptiPmSamplingCounterDataImageInitialize(&init_image))) return false;
    return true;
  }

  bool start() {
    DS_PARAMS(CUpti_PmSampling_Start_Params, p);
    p.pPmSamplingObject = sampler_;
    return running_ = DS_OK(cuptiPmSamplingStart(&p));
  }

  bool stop() {
    DS_PARAMS(CUpti_PmSampling_Stop_Params, p);
    p.pPmSamplingObject = sampler_;
    running_ = false;
    return DS_OK(cuptiPmSamplingStop(&p));
  }

  // Moves what the hardware buffer holds into the counter-data image, without evaluating it (that is slow).
  // The image keeps the window's first samples: once it is full, CUPTI drops the rest of the buffer (on the
  // H200 a second image decoded after a full one stayed empty, 2026-12-03).
  bool decode() {
    DS_PARAMS(CUpti_PmSampling_DecodeData_Params, d);
    d.pPmSamplingObject = sampler_;
    d.pCounterDataImage = image_.data();
    d.counterDataImageSize = image_.size();
    if (!DS_OK(cuptiPmSamplingDecodeData(&d))) return false;
    if (d.overflow) {
      std::fprintf(stderr, "dram_sampler: the hardware buffer overflowed\n");
      return false;
    }
    if (d.decodeStopReason == CUPTI_PM_SAMPLING_DECODE_STOP_REASON_COUNTER_DATA_FULL)
      std::fprintf(stderr,
                   "dram_sampler: the window ran past %llu samples; the first %llu are kept "
                   "(KERNEL_TRACE_DRAM_SAMPLES keeps more)\n",
                   static_cast<unsigned long long>(samples_), static_cast<unsigned long long>(samples_));
    return true;
  }
  // The image's samples, in order.
  bool evaluate() {
    DS_PARAMS(CUpti_PmSampling_GetCounterDataInfo_Params, info);
    info.pCounterDataImage = image_.data();
    info.counterDataImageSize = image_.size();
    if (!DS_OK(cuptiPmSamplingGetCounterDataInfo(&info))) return false;
    for (size_t i = 0; i < info.numCompletedSamples; ++i) {
      DS_PARAMS(CUpti_PmSampling_CounterData_GetSampleInfo_Params, s);
      s.pPmSamplingObject = sampler_;
      s.pCounterDataImage = image_.data();
      s.counterDataImageSize = image_.size();
      s.sampleIndex = i;
      Sample sample{0, 0, std::vector<double>(metrics_.size())};
      DS_PARAMS(CUpti_Profiler_Host_EvaluateToGpuValues_Params, e);
      e.pHostObject = host_;
      e.pCounterDataImage = image_.data();
      e.counterDataImageSize = image_.size();
      e.ppMetricNames = metrics_.data();
      e.numMetrics = metrics_.size();
      e.rangeIndex = i;
      e.pMetricValues = sample.values.data();
      if (!DS_OK(cuptiPmSamplingCounterDataGetSampleInfo(&s)) || !DS_OK(cuptiProfilerHostEvaluateToGpuValues(&e)))
        return false;
      sample.start = s.startTimestamp;
      sample.end = s.endTimestamp;
      kept_.push_back(std::move(sample));
    }
    return true;
  }

  bool write(const char* path) const {
    std::FILE* f = std::fopen(path, "w");
    if (!f) {
      std::fprintf(stderr, "dram_sampler: cannot write %s: %s\n", path, std::strerror(errno));
      return false;
    }
    std::fprintf(f, "start_ns,end_ns");
    for (const std::string& m : names_) std::fprintf(f, ",%s", m.c_str());
    std::fprintf(f, "\n");
    for (const Sample& s : kept_) {
      std::fprintf(f, "%llu,%llu", static_cast<unsigned long long>(s.start), static_cast<unsigned long long>(s.end));
      for (double v : s.values) std::fprintf(f, ",%.17g", v);
      std::fprintf(f, "\n");
    }
    std::fclose(f);
    std::fprintf(stderr, "dram_sampler: %zu samples of %llu ns written to %s\n", kept_.size(),
                 static_cast<unsigned long long>(interval_ns_), path);
    return true;
  }

  ~Sampler() {
    if (running_) stop();
    if (sampler_) {
      DS_PARAMS(CUpti_PmSampling_Disable_Params, p);
      p.pPmSamplingObject = sampler_;
      cuptiPmSamplingDisable(&p);
    }
    if (host_) {
      DS_PARAMS(CUpti_Profiler_Host_Deinitialize_Params, p);
      p.pHostObject = host_;
      cuptiProfilerHostDeinitialize(&p);
    }
  }

 private:
  // The asked metrics whose base metric the chip samples; the DRAM's own are listed where none is.
  bool choose_metrics(const char* chip) {
    const char* asked = std::getenv("KERNEL_TRACE_DRAM_METRICS");
    std::istringstream list(asked && *asked ? asked : "dram__bytes_read.sum,dram__bytes_write.sum");
    std::vector<std::string> bases;
    for (int type = 0; type < CUPTI_METRIC_TYPE__COUNT; ++type) {
      DS_PARAMS(CUpti_Profiler_Host_GetBaseMetrics_Params, p);
      p.pHostObject = host_;
      p.metricType = static_cast<CUpti_MetricType>(type);
      if (!DS_OK(cuptiProfilerHostGetBaseMetrics(&p))) return false;
      for (size_t i = 0; i < p.numMetrics; ++i) bases.emplace_back(p.ppMetricNames[i]);
    }
    for (std::string name; std::getline(list, name, ',');) {
      const std::string base = name.substr(0, name.find('.'));
      if (std::find(bases.begin(), bases.end(), base) != bases.end())
        names_.push_back(name);
      else
        std::fprintf(stderr, "dram_sampler: %s does not sample %s\n", chip, name.c_str());
    }
    if (names_.empty() && !(asked && *asked))  // another name for the DRAM's bytes on this chip
      for (const std::string& b : bases)
        if (b.rfind("dram__bytes", 0) == 0) names_.push_back(b + ".sum");
    if (names_.empty()) {
      std::fprintf(stderr, "dram_sampler: %s samples these DRAM metrics:", chip);
      for (const std::string& b : bases)
        if (b.rfind("dram__", 0) == 0 || b.rfind("fbpa__", 0) == 0) std::fprintf(stderr, " %s", b.c_str());
      std::fprintf(stderr, "\n");
      return false;
    }
    for (const std::string& n : names_) metrics_.push_back(n.c_str());
    return true;
  }

  std::vector<uint8_t> availability_, config_, image_;
  uint64_t samples_ = 0;  // the image's capacity
  std::vector<std::string> names_;
  std::vector<const char*> metrics_;
  std::vector<Sample> kept_;
  CUpti_Profiler_Host_Object* host_ = nullptr;
  CUpti_PmSampling_Object* sampler_ = nullptr;
  uint64_t interval_ns_ = 0;
  bool running_ = false;
};

// Set up at load (a second or two of host work, mostly the profiler's metric tables, while the program
// starts), start at the FROM-th graph launch (or at once, if set-up took longer), stop after LAUNCHES
// more, then decode the samples and write the file.
// (Probes fork this process before it initialises CUDA, and a child of a process that has cannot use it;
// ours do not: they must not initialise a device.)
std::atomic<bool> g_exiting{false};

void sample_window(const std::string out, uint64_t from, uint64_t launches) {
  Sampler sampler;
  if (!sampler.set_up()) {
    std::fprintf(stderr, "dram_sampler: no DRAM samples (%s not written)\n", out.c_str());
    return;
  }
  using namespace std::chrono_literals;
  while (g_graph_launches < from && !g_exiting) std::this_thread::sleep_for(50us);
  if (g_exiting) {
    std::fprintf(stderr, "dram_sampler: the program made fewer than %llu graph launches; %s not written\n",
                 static_cast<unsigned long long>(from), out.c_str());
    return;
  }
  const uint64_t first = g_graph_launches;
  if (first > from)
    std::fprintf(stderr, "dram_sampler: set up after graph launch %llu; sampling from there\n",
                 static_cast<unsigned long long>(first));
  if (!sampler.start()) return;
  // Decoding runs slower than 1 us samples arrive (20,000 in 0.3 s), so it waits for the stop: decoding
  // every millisecond during a window of 40 steps overflowed the hardware buffer (512 MiB) all the same.
  while (g_graph_launches < first + launches && !g_exiting) std::this_thread::sleep_for(100us);
  if (!sampler.stop()) return;
  const auto t0 = std::chrono::steady_clock::now();
  if (!sampler.decode() || !sampler.evaluate()) return;
  std::fprintf(stderr, "dram_sampler: decoded in %.2f s\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  sampler.write(out.c_str());
}

std::thread* g_thread = nullptr;  // joined at exit: the window's file must be written before the process ends

__attribute__((constructor)) void start_dram_sampler() {
  const char* out = std::getenv("KERNEL_TRACE_DRAM_OUT");
  if (!out || !*out) return;
  g_pid = getpid();
  CUpti_SubscriberHandle subscriber;
  if (!DS_OK(cuptiSubscribe(&subscriber, on_runtime_api, nullptr)) ||
      !DS_OK(cuptiEnableCallback(1, subscriber, CUPTI_CB_DOMAIN_RUNTIME_API,
                                 CUPTI_RUNTIME_TRACE_CBID_cudaGraphLaunch_v10000)))
    return;
  g_thread = new std::thread(sample_window, std::string(out), env_or("KERNEL_TRACE_DRAM_FROM", 200),
                             env_or("KERNEL_TRACE_DRAM_LAUNCHES", 1));
}

__attribute__((destructor)) void join_dram_sampler() {
  if (!g_thread || getpid() != g_pid) return;
  g_exiting = true;  // a program that ends inside the window: keep what was sampled
  g_thread->join();
}

}  // namespace
