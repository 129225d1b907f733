// gpu_decode_bench: end-to-end GPU prefill and decode tok/s on random-weight Llama shapes, bf16, beside the
// decode floor (weight bytes / device copy bandwidth, both measured in this run). Two floors: the issue's,
// on every weight of the model (as its figures and PyTorch's table count them), and a stricter one on the
// bytes a step reads (a separate classifier's step reads one row of the embedding table, not all of it).
//
//   gpu_decode_bench [--shapes stories110M,tinyllama,llama2-7b] [--batches 1,8] [--prompt-len 512]
//                    [--new-tokens 256] [--backends NAME,...] [--work-dir DIR] [--tokenizer PATH]
//                    [--tensor-parallel 1,2]
// With --tensor-parallel N the model runs on N GPUs (a rank each, NCCL); the floor is then per GPU: the
// bytes each GPU reads per step (its 1/N of the weights) over the copy bandwidth of one GPU.
// Attention goes through the runtime's default chain (flash_cuda, mha_cuda, mha_cpu), as in llm-runner,
// unless --backends names one; the table's attention column is the backend that ran.
// Checkpoints are written once into --work-dir as Q8_0 (smallest to write; dequantized to bf16 on upload:
// decode speed does not depend on the values).
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <tuple>

#include "copy_bandwidth.h"
#include "cuda_check.h"
#include "engine.h"
#include "llama_cuda.h"
#include "log.h"
#include "models_dir.h"
#include "random_checkpoint.h"
#include "sampler.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// Device-to-device copy bandwidth (copy_bandwidth.h), GB/s.
double copy_bandwidth() { return copy_bandwidth_gbs(size_t{1} << 30, 10); }

// The floor's bytes, as the issue defines them: every bf16 weight of the model (its 1,350 / 220 tok/s at 3.0
// TB/s for TinyLlama and Llama-2-7B count the embedding table and the separate classifier both), the norm
// gains included. PyTorch's table (torch_decode_bench.py) counts the same.
size_t bf16_weight_bytes(const llm::ModelConfig& c) {
  const size_t d = c.dim, kv = c.kv_dim(), h = c.hidden_dim, v = c.vocab_size;
  const size_t per_layer = d * d * 2 + d * kv * 2 + d * h * 3 + 2 * d;
  return 2 * (c.n_layers * per_layer + d + v * d * (c.shared_classifier ? 1 : 2));
}

// What a decode step reads of them: a separate classifier's step reads one row of the embedding table, not
// all of it. The stricter floor, printed beside the issue's.
size_t bf16_bytes_read_a_step(const llm::ModelConfig& c) {
  const size_t all = bf16_weight_bytes(c);
  return c.shared_classifier ? all : all - 2 * (static_cast<size_t>(c.vocab_size) - 1) * c.dim;
}

// Whether a checkpoint written for `b` has the shape of `a` (what write_checkpoint stores).
bool same_shape(const llm::ModelConfig& a, const llm::ModelConfig& b) {
  auto shape = [](const llm::ModelConfig& c) {
    return std::tie(c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len,
                    c.shared_classifier);
  };
  return shape(a) == shape(b);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"GPU prefill and decode tok/s on random-weight Llama shapes, beside the bandwidth floor"};
  std::vector<std::string> shapes = {"stories110M", "tinyllama", "llama2-7b"};
  std::vector<std::string> backends;  // empty: the runtime's default order
  std::vector<int> batches = {1, 8}, tensor_parallel = {1};
  std::vector<std::string> products = {"auto"};
  int prompt_len = 512, new_tokens = 256;
  std::vector<float> sample;  // temperature, top_k, top_p: decode by sampling (forward_sample) rather than greedily
  std::string work_dir = (fs::temp_directory_path() / "llm-gpu-bench").string(), tokenizer, dtype = "bf16";
  app.add_option("--shapes", shapes, "model presets")->delimiter(',');
  app.add_option("--batches", batches, "sequences decoded together")->delimiter(',');
  app.add_option("--prompt-len", prompt_len, "prompt tokens per sequence")->capture_default_str();
  app.add_option("--new-tokens", new_tokens, "decode steps")->capture_default_str();
  app.add_option("--backends", backends, "attention backend chain (default: the runtime's, flash_cuda first)")
      ->delimiter(',');
  app.add_option(
         "--products", products,
         "matrix products: auto (fused GEMV kernels for steps of up to 16 tokens, cuBLAS otherwise; the "
         "kernel LLM_GEMV names, else each where it is faster), cuda_core or tensor_core (that GEMV kernel "
         "where it applies), cublas, auto_separate_norm (auto with every RMSNorm a kernel of its own, as before the "
         "CUDA-core products took it in); several: each is timed")
      ->delimiter(',')
      ->check(CLI::IsMember({"auto", "cuda_core", "tensor_core", "cublas", "auto_separate_norm"}));
  app.add_option("--tensor-parallel", tensor_parallel, "GPUs per model (a rank each); several: each is timed")
      ->delimiter(',');
  app.add_option("--dtype", dtype, "bf16, fp16 or fp32")->capture_default_str();
  app.add_option("--sample", sample,
                 "T,K,P: decode by sampling at temperature T with top-k K (0: all) and top-p P, as generation "
                 "does (LanguageModel::forward_sample), rather than greedily")
      ->delimiter(',')
      ->expected(3);
  app.add_option("--work-dir", work_dir, "where random checkpoints are written")->capture_default_str();
  app.add_option("--tokenizer", tokenizer, "a 32000-token tokenizer (default: llama2-tokenizer.bin in the models dir)");
  CLI11_PARSE(app, argc, argv);
  llm::set_log_level("warn");
  if (tokenizer.empty()) tokenizer = llm::resolve_models_dir() + "/llama2-tokenizer.bin";
  fs::create_directories(work_dir);

  const llm::cuda::DeviceStatus gpu = llm::cuda::probe_device(0);
  if (!gpu.usable) {
    std::printf("gpu_decode_bench: no usable GPU: %s\n", gpu.reason.c_str());
    return 0;
  }
  const double bw = copy_bandwidth();
  std::printf("device %s; copy bandwidth %.0f GB/s (read + write)\n", gpu.name.c_str(), bw);
  std::printf(
      "| shape | GPUs | batch | attention | products | weights (bf16) | prefill tok/s | decode tok/s (per seq) | "
      "decode tok/s (aggregate) | floor tok/s (per GPU) | of floor | read a step | floor on bytes read | of it |\n"
      "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::fflush(stdout);

  for (const auto& shape : shapes) {
    llm::ModelConfig config = llm::model_preset(shape);
    config.max_seq_len = std::max(config.max_seq_len, prompt_len + new_tokens);
    const std::string path = (fs::path(work_dir) / (shape + "_random_q80.bin")).string();
    // A file left by an earlier run or build may have another shape than the one asked for now (a preset
    // changed, another --prompt-len): written again.
    if (fs::exists(path) && !same_shape(llm::Checkpoint::open(path)->config(), config)) fs::remove(path);
    if (!fs::exists(path)) {
      const auto t0 = Clock::now();
      llm::write_checkpoint(path, config, llm::CheckpointFormat::V2Q8, llm::random_weights(config, 1));
      std::fprintf(stderr, "wrote %s in %.1f s\n", path.c_str(),
                   std::chrono::duration<double>(Clock::now() - t0).count());
    }
    const int max_batch = *std::max_element(batches.begin(), batches.end());
    int gpus = 0;
    LLM_CUDA_CHECK(cudaGetDeviceCount(&gpus));
    for (int world : tensor_parallel) {
      if (world > gpus) {
        std::printf("| %s | %d | - | - | - | not run: %d GPU(s) present |\n", shape.c_str(), world, gpus);
        continue;
      }
      llm::RunConfig rc;
      rc.model = path;
      rc.tokenizer = tokenizer;
      rc.device = "cuda";
      rc.dtype = dtype;
      rc.backend_order = backends;
      rc.max_context = prompt_len + new_tokens;
      rc.tensor_parallel = world;
      std::unique_ptr<llm::Engine> engine;
      try {
        const auto t0 = Clock::now();
        engine = std::make_unique<llm::Engine>(rc, max_batch);
        std::fprintf(stderr, "loaded %s on %d GPU(s) in %.1f s\n", shape.c_str(), world,
                     std::chrono::duration<double>(Clock::now() - t0).count());
      } catch (const std::exception& e) {
        std::printf("| %s | %d | - | - | - | error: %s |\n", shape.c_str(), world, e.what());
        continue;
      }
      llm::LanguageModel& model = engine->model();
      // Each GPU reads 1/world of the weights.
      const size_t weight_bytes = bf16_weight_bytes(config), read_bytes = bf16_bytes_read_a_step(config);
      const double floor = world * bw * 1e9 / weight_bytes, read_floor = world * bw * 1e9 / read_bytes;
      std::mt19937 rng(7);
      std::uniform_int_distribution<int> token(3, config.vocab_size - 1);
      auto* gpu_model = dynamic_cast<llm::cuda::LlamaCuda*>(&model);
      const llm::cuda::GemvKernel env_kernel = gpu_model ? gpu_model->gemv_kernel() : llm::cuda::GemvKernel::Auto;
      for (int batch : batches)
        for (const std::string& product : products) {
          if (!gpu_model && product != "auto") continue;  // a tensor-parallel group takes the default products
          if (gpu_model) {
            gpu_model->set_gemv_max_tokens(product == "cublas" ? 0 : llm::cuda::kGemvMaxTokens);
            gpu_model->set_fuse_norm(product != "auto_separate_norm");
            gpu_model->set_gemv_kernel(product == "cuda_core"     ? llm::cuda::GemvKernel::CudaCore
                                       : product == "tensor_core" ? llm::cuda::GemvKernel::TensorCore
                                                                  : env_kernel);
          }
          std::vector<llm::SequenceChunk> prompts;
          for (int s = 0; s < batch; ++s) {
            llm::SequenceChunk c{s, 0, {}};
            for (int i = 0; i < prompt_len; ++i) c.tokens.push_back(token(rng));
            prompts.push_back(c);
          }
          std::vector<int> ids(batch), picks;
          const bool sampling = !sample.empty() && sample[0] > 0.0f;
          llm::SamplingParams sp;
          if (sampling) sp = {sample[0], static_cast<int>(sample[1]), sample[2], 1};
          std::vector<llm::Sampler> samplers(batch, llm::Sampler(sp));
          std::vector<float> uniforms(batch);
          const int ahead = sampling ? 1 : model.greedy_steps_ahead();
          double best_prefill = 0, best_decode = 0, best_back_to_back = 0;
          for (int rep = 0; rep < 3; ++rep) {  // rep 0 warms up (graph capture, cuBLAS heuristics)
            auto t0 = Clock::now();
            model.forward_argmax(prompts, ids.data());
            const double prefill = std::chrono::duration<double>(Clock::now() - t0).count();
            // Decode as greedy generation does: runs of the model's greedy_steps_ahead() steps a call (one
            // graph launch and one copy of the ids a run on the GPU; LLM_STEPS_AHEAD sets it).
            t0 = Clock::now();
            for (int step = 0; step < new_tokens;) {
              const int run = std::min(ahead, new_tokens - step);
              std::vector<llm::SequenceChunk> chunks;
              for (int s = 0; s < batch; ++s) chunks.push_back(llm::SequenceChunk{s, prompt_len + step, {ids[s]}});
              if (sampling) {
                for (int s = 0; s < batch; ++s) uniforms[s] = samplers[s].next_uniform();
                model.forward_sample(chunks, sp, uniforms.data(), ids.data());
              } else if (run == 1) {
                model.forward_argmax(chunks, ids.data());
              } else {
                picks.resize(static_cast<size_t>(run) * batch);
                model.forward_argmax_steps(chunks, run, picks.data());
                std::copy(picks.end() - batch, picks.end(), ids.begin());
              }
              step += run;
            }
            const double decode = std::chrono::duration<double>(Clock::now() - t0).count();
            if (gpu_model && rep > 0) {  // one step (at the middle length) with no host round trip between replays
              std::vector<llm::SequenceChunk> chunks;
              for (int s = 0; s < batch; ++s)
                chunks.push_back(llm::SequenceChunk{s, prompt_len + new_tokens / 2, {ids[s]}});
              t0 = Clock::now();
              gpu_model->run_back_to_back(chunks, new_tokens);
              best_back_to_back =
                  std::max(best_back_to_back, new_tokens / std::chrono::duration<double>(Clock::now() - t0).count());
            }
            if (rep == 0) continue;
            best_prefill = std::max(best_prefill, batch * prompt_len / prefill);
            best_decode = std::max(best_decode, new_tokens / decode);
          }
          const char* only_nccl = std::getenv("LLM_ALL_REDUCE");
          const std::string gpus_label =
              std::to_string(world) +
              (world > 1 && only_nccl && std::string(only_nccl) == "nccl" ? " (NCCL only)" : "");
          std::string product_label = product == "auto" && env_kernel != llm::cuda::GemvKernel::Auto
                                          ? product + " (LLM_GEMV=" + llm::cuda::gemv_kernel_name(env_kernel) + ")"
                                          : product;
          if (sampling)
            product_label += ", sampled (T " + fmt::format("{:g}", sp.temperature) + ", top-k " +
                             std::to_string(sp.top_k) + ", top-p " + fmt::format("{:g}", sp.top_p) + ")";
          std::printf(
              "| %s | %s | %d | %s | %s | %.2f GB | %.0f | %.0f | %.0f | %.0f | %.1f%% | %.2f GB | %.0f | %.1f%% |\n",
              shape.c_str(), gpus_label.c_str(), batch, model.attention_backend().c_str(), product_label.c_str(),
              weight_bytes / 1e9, best_prefill, best_decode, best_decode * batch, floor, 100.0 * best_decode / floor,
              read_bytes / 1e9, read_floor, 100.0 * best_decode / read_floor);
          if (best_back_to_back > 0)
            std::fprintf(stderr,
                         "%s batch %d: decode in runs of %d steps a graph launch; %.0f decode tok/s per sequence "
                         "with single steps replayed back to back (no host round trip between them)\n",
                         shape.c_str(), batch, ahead, best_back_to_back);
          std::fflush(stdout);
        }
    }
  }
  return 0;
}
