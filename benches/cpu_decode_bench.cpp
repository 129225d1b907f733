// cpu_decode_bench: CPU prefill and decode speed of llm-runner's engine, each decode figure printed beside
// its floor. Decode on the CPU is bound by memory bandwidth: each step reads every weight once, so the
// floor is (2-thread read bandwidth) / (bytes read per token). The bandwidth is measured in this run, on
// a buffer as large as the model's per-token bytes (the same cache behaviour) and on 64 MB.
//
//   cpu_decode_bench [--threads 2] [--new-tokens 256] [--runs 3] [--work-dir /tmp/llm-bench]
#include <immintrin.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "cpu_ops.h"
#include "engine.h"
#include "log.h"
#include "models_dir.h"
#include "random_checkpoint.h"
#include "thread_pool.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

__attribute__((target("avx2"))) float sum_avx2(const float* p, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
  }
  float out[8];
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  float s = 0;
  for (float v : out) s += v;
  for (; i < n; ++i) s += p[i];
  return s;
}

float sum_scalar(const float* p, size_t n) {
  float s = 0;
  for (size_t i = 0; i < n; ++i) s += p[i];
  return s;
}

// Read bandwidth in GB/s of the pool's threads, each reading its share of a `bytes` buffer: the median
// of the passes made in 250 ms (each pass reads the whole buffer once, as a decode step reads the
// weights once). The median, not the best: decode figures are medians too, and this host is shared.
double read_bandwidth(llm::ThreadPool& pool, size_t bytes) {
  const bool avx2 = __builtin_cpu_supports("avx2");
  std::vector<float> buf(bytes / sizeof(float), 1.0f);
  const int parts = pool.size();
  std::vector<float> sinks(parts);
  std::vector<double> passes;
  const auto deadline = Clock::now() + std::chrono::milliseconds(250);
  while (passes.size() < 5 || Clock::now() < deadline) {
    const auto t0 = Clock::now();
    pool.parallel_for(parts, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const size_t n = buf.size() / parts;
        sinks[i] += avx2 ? sum_avx2(buf.data() + i * n, n) : sum_scalar(buf.data() + i * n, n);
      }
    });
    passes.push_back(bytes / std::chrono::duration<double>(Clock::now() - t0).count() / 1e9);
  }
  if (sinks[0] == 12345.0f) std::puts("");  // keep the reads
  std::sort(passes.begin(), passes.end());
  return passes[passes.size() / 2];
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Row {
  std::string model, format;
  size_t bytes_per_token = 0;
  double bandwidth = 0, prefill = 0, decode = 0, decode_best = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU decode and prefill speed beside the memory-bandwidth floor"};
  int threads = 2, new_tokens = 256, runs = 3;
  std::string work_dir = (fs::temp_directory_path() / "llm-bench").string();
  app.add_option("--threads", threads, "threads (the comparison figures use 2)")->capture_default_str();
  app.add_option("--new-tokens", new_tokens, "tokens generated per run")->capture_default_str();
  app.add_option("--runs", runs, "runs per model (interleaved); median and best are reported")->capture_default_str();
  app.add_option("--work-dir", work_dir, "where random-weight checkpoints are written")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  llm::set_log_level("warn");

  const std::string models = llm::resolve_models_dir();
  fs::create_directories(work_dir);
  // Random stories15M-shaped checkpoints (written once, reused): speed does not depend on the values.
  const llm::ModelConfig s15 = llm::model_preset("stories15M");
  const std::string s15_f32 = (fs::path(work_dir) / "stories15M_random_f32.bin").string();
  const std::string s15_q80 = (fs::path(work_dir) / "stories15M_random_q80.bin").string();
  if (!fs::exists(s15_f32))
    llm::write_checkpoint(s15_f32, s15, llm::CheckpointFormat::LegacyF32, llm::random_weights(s15, 1));
  if (!fs::exists(s15_q80))
    llm::write_checkpoint(s15_q80, s15, llm::CheckpointFormat::V2Q8, llm::random_weights(s15, 1));

  struct Case {
    std::string label, format, model, tokenizer, load = "mmap";
  };
  std::vector<Case> cases = {
      {"stories260K", "fp32", models + "/stories260K.bin", models + "/tok512.bin"},
      {"stories260K", "q8_0", models + "/stories260K_q80.bin", models + "/tok512.bin"},
      {"stories15M (random)", "fp32", s15_f32, models + "/llama2-tokenizer.bin"},
      {"stories15M (random)", "q8_0", s15_q80, models + "/llama2-tokenizer.bin"},
      {"stories15M (random)", "fp32", s15_f32, models + "/llama2-tokenizer.bin", "memory"},
      {"stories15M (random)", "q8_0", s15_q80, models + "/llama2-tokenizer.bin", "memory"},
  };
  const std::string prompt =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
      "friends. One day, she saw a big red ball under a tree.";

  // Every case keeps its engine; runs go round-robin over the cases, so that noise from other work on
  // the machine (shared hosts vary by 30% minute to minute) falls on all of them alike.
  struct Live {
    Case c;
    std::unique_ptr<llm::Engine> engine;
    std::vector<double> prefill, decode;
    std::vector<double> bandwidth;  // measured right before each run of this case
  };
  std::vector<Live> live;
  for (const auto& c : cases) {
    if (!fs::exists(c.model) || !fs::exists(c.tokenizer)) {
      std::printf("skipping %s %s: %s or %s not found (set LLM_MODELS_DIR)\n", c.label.c_str(), c.format.c_str(),
                  c.model.c_str(), c.tokenizer.c_str());
      continue;
    }
    llm::RunConfig config;
    config.model = c.model;
    config.tokenizer = c.tokenizer;
    config.threads = threads;
    config.backend_order = {"mha_cpu"};
    config.load = c.load;
    live.push_back(Live{c, std::make_unique<llm::Engine>(config), {}, {}, {}});
  }
  llm::ThreadPool probe_pool(threads);
  double bw64 = 0;
  for (int r = 0; r <= runs; ++r) {  // run 0 warms up (pages the weights in) and is not counted
    if (r == 1) bw64 = read_bandwidth(probe_pool, 64u << 20);
    for (auto& l : live) {
      const size_t bytes = std::max<size_t>(l.engine->checkpoint().weights().bytes_per_token(), 1u << 20);
      if (r > 0) l.bandwidth.push_back(read_bandwidth(probe_pool, bytes));
      llm::GenerationOptions o;
      o.max_tokens = std::min(new_tokens, l.engine->model().max_context() - 64);
      o.stop_at_eos = false;
      auto result = l.engine->generate(prompt, o);
      if (r == 0) continue;
      l.prefill.push_back(result.prefill_tokens_per_second());
      l.decode.push_back(result.decode_tokens_per_second());
    }
  }
  std::vector<Row> rows;
  for (auto& l : live) {
    Row row{l.c.label, l.c.format + (l.c.load == "mmap" ? "" : ", load: memory")};
    row.bytes_per_token = l.engine->checkpoint().weights().bytes_per_token();
    std::sort(l.prefill.begin(), l.prefill.end());
    std::sort(l.decode.begin(), l.decode.end());
    row.prefill = l.prefill[l.prefill.size() / 2];
    row.decode = l.decode[l.decode.size() / 2];
    row.decode_best = l.decode.back();
    row.bandwidth = median(l.bandwidth);
    rows.push_back(row);
  }

  std::printf("\nCPU decode: %d threads, %s kernels; read bandwidth %.1f GB/s on 64 MB (median)\n", threads,
              llm::cpu::isa_name(), bw64);
  std::printf("floor = read bandwidth on a buffer of the model's bytes/token / bytes per token, measured right\n");
  std::printf(
      "before each decode run; medians of %d runs interleaved across models; of floor: median decode / floor\n\n",
      runs);
  std::printf(
      "| model | weights | bytes/token | read GB/s | floor tok/s | prefill tok/s | decode tok/s (median) "
      "| decode tok/s (best) | of floor |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const auto& r : rows) {
    const double floor = r.bandwidth * 1e9 / r.bytes_per_token;
    std::printf("| %s | %s | %.2f MB | %.1f | %.0f | %.0f | %.0f | %.0f | %.0f%% |\n", r.model.c_str(),
                r.format.c_str(), r.bytes_per_token / 1e6, r.bandwidth, floor, r.prefill, r.decode, r.decode_best,
                100.0 * r.decode / floor);
  }
  return 0;
}
