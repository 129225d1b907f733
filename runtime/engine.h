// Everything a run needs, built from a RunConfig: checkpoint, tokenizer, plugins, backend chain and
// model. llm-runner, the tests and the benches all start here.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend_chain.h"
#include "checkpoint.h"
#include "dtype.h"
#include "generator.h"
#include "language_model.h"
#include "plugin_loader.h"
#include "run_config.h"
#include "thread_pool.h"
#include "tokenizer.h"

namespace llm {

// The CPU as an SDK device (name from /proc/cpuinfo, memory from sysconf), offering `pool` (optional)
// to backends as host services.
llm_device_info cpu_device_info(int threads, const ThreadPool* pool = nullptr);

// The attention shape a model presents to probes.
llm_attention_shape attention_shape(const ModelConfig& config, int max_context, int max_batch);

// Thread count for `requested` (0: every hardware thread).
int resolve_threads(int requested);

class Engine {
 public:
  // Loads everything; throws llm::Error naming the file, key or plugin at fault.
  explicit Engine(const RunConfig& config, int max_batch = 1);
  ~Engine();

  GenerationResult generate(const std::string& prompt, const GenerationOptions& options,
                            const std::function<void(const std::string&)>& on_text = {});
  // Several prompts generated together (the engine must have been built with max_batch >= their count).
  std::vector<GenerationResult> generate_batch(const std::vector<std::string>& prompts,
                                               const GenerationOptions& options,
                                               const std::function<void(size_t, const std::string&)>& on_text = {});
  // Options from the config (max_tokens, sampling, add_bos).
  GenerationOptions generation_options() const;

  LanguageModel& model() { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const Checkpoint& checkpoint() const { return *checkpoint_; }
  const std::vector<PluginCandidate>& plugins() const { return plugins_; }
  const RunConfig& config() const { return config_; }
  int threads() const { return pool_->size(); }
  int tensor_parallel() const { return config_.tensor_parallel; }
  // "cpu" or "cuda": where the model runs after `auto` was resolved.
  const std::string& device() const { return device_; }
  // Device memory statistics (the CUDA allocator's line), or "" on the CPU.
  std::string memory_stats() const;

 private:
  std::unique_ptr<LanguageModel> cpu_tensor_parallel(int world, int max_batch, int context,
                                                     const std::vector<InjectedFailure>& failures);
  // A rank per GPU (devices 0 .. world-1), summing through NCCL (CUDA builds only).
  std::unique_ptr<LanguageModel> cuda_tensor_parallel(int world, DType dtype, int max_batch, int context,
                                                      const std::vector<InjectedFailure>& failures);
  RunConfig config_;
  std::unique_ptr<ThreadPool> pool_;  // before the model, which computes on it
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<PluginCandidate> plugins_;  // declared before model_: plugins outlive the chain
  std::unique_ptr<LanguageModel> model_;
  std::string device_ = "cpu";
};

}  // namespace llm
