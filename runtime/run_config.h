// The llm-runner configuration: one YAML file (schema in configs/README.md), overridden by flags.
// Unknown keys, wrong types and out-of-range values are errors naming the key and the expected form.
#pragma once

#include <string>
#include <vector>

#include "plugin_trust.h"
#include "sampler.h"

namespace llm {

struct RunConfig {
  std::string models_dir;     // "" -> LLM_MODELS_DIR, then ../shared/models (see models_dir.h)
  std::string model;          // checkpoint path; relative paths resolve in the models directory
  std::string tokenizer;      // tokenizer path; likewise
  std::string load = "mmap";  // "mmap" or "memory" (see LoadMode in mapped_file.h)
  std::string prompt = "Once upon a time";
  int max_tokens = 256;     // new tokens to generate
  SamplingParams sampling;  // temperature 0 (greedy) unless set
  bool add_bos = true;
  std::string device = "cpu";              // where the model runs: cpu, cuda, or auto (CUDA when usable, else CPU)
  std::string dtype = "bf16";              // GPU weights, activations and KV cache: bf16, fp16 or fp32 (the CPU: fp32)
  int threads = 0;                         // 0: all hardware threads
  int max_context = 0;                     // 0: the model's own limit
  int tensor_parallel = 1;                 // ranks the model is split over (tensor_parallel.h)
  std::vector<std::string> backend_order;  // empty: default order (see backend_chain.h)
  std::vector<std::string> plugin_dirs;
  std::vector<std::string> fail_backend;  // failure injection, "NAME@CALL" (see backend_chain.h)
  std::vector<std::string> check_output;  // backends whose results are checked (see BackendChain)
  DigestAllowlist require_digest;         // plugin name -> SHA-256 (lower-case hex); empty: no allowlist
  std::string log_level = "info";
};

// Parses YAML text; `source` names it in messages (a file path). Relative models_dir and plugin_dirs
// are taken relative to `base_dir` when it is not empty.
RunConfig parse_run_config(const std::string& yaml_text, const std::string& source, const std::string& base_dir = "");

// Reads and parses a config file (relative paths inside it are relative to the file's directory).
RunConfig load_run_config(const std::string& path);

// Checks cross-field rules (a model given, ...); throws llm::Error naming the key. The tokenizer may be
// left out for a model file that carries one (GGUF); the engine says so when it does not.
void validate_run_config(const RunConfig& config);

}  // namespace llm
