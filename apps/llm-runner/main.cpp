// llm-runner: generate text with a Llama-family model, attention served by plugins.
//   llm-runner --config FILE [overrides...]     generate; text on stdout, logs and stats on stderr
//   llm-runner backends [--config FILE] [--json]  list every plugin found and its probe verdict
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "backend_chain.h"
#include "checkpoint.h"
#include "cpu_ops.h"
#include "engine.h"
#include "error.h"
#include "log.h"
#include "models_dir.h"
#if LLM_HAVE_CUDA
#include "cuda_device.h"
#include "dtype.h"
#endif

namespace {

// Flags that override the config, each left unset unless given.
struct Overrides {
  std::optional<std::string> prompt, model, tokenizer, models_dir, log_level, device, dtype, prompts_file;
  std::optional<int> max_tokens, top_k, threads;
  std::optional<float> temperature, top_p;
  std::optional<uint64_t> seed;
  std::optional<std::vector<std::string>> backends;
  std::vector<std::string> plugin_dirs;
  std::vector<std::string> fail_backend;
  std::vector<std::string> check_output;
  std::optional<int> tensor_parallel;
};

void add_common_options(CLI::App& app, std::string& config_path, Overrides& o) {
  app.add_option("--config", config_path, "YAML config file (schema: configs/README.md)")->check(CLI::ExistingFile);
  app.add_option("--model", o.model, "checkpoint path (relative: in the models directory)");
  app.add_option("--tokenizer", o.tokenizer, "tokenizer path (.model or llama2.c .bin)");
  app.add_option("--models-dir", o.models_dir, "models directory (default: $LLM_MODELS_DIR, ../shared/models)");
  app.add_option("--backends", o.backends, "attention backend order, e.g. mha_cpu or flash_cuda,mha_cpu")
      ->delimiter(',');
  app.add_option("--plugin-dir", o.plugin_dirs, "extra plugin directory (repeatable), searched first");
  app.add_option("--fail-backend", o.fail_backend,
                 "failure drill: NAME@CALL makes that backend fail its CALL-th call (repeatable)");
  app.add_option("--check-output", o.check_output,
                 "check NAME's results (a NaN or an unwritten element fails the call; host-memory results only)")
      ->delimiter(',');
  app.add_option("--tensor-parallel", o.tensor_parallel,
                 "split the model over N ranks (heads, KV cache and SwiGLU rows; CPU: ranks are threads)")
      ->check(CLI::Range(1, 64));
  app.add_option("--threads", o.threads, "CPU threads (0: all)")->check(CLI::Range(0, 1024));
  app.add_option("--device", o.device, "cpu, cuda, or auto (CUDA when a usable GPU is present)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  app.add_option("--dtype", o.dtype, "GPU weights and KV cache: bf16, fp16 or fp32")
      ->check(CLI::IsMember({"bf16", "fp16", "fp32"}));
  app.add_option("--log-level", o.log_level, "trace, debug, info, warn, error or off");
}

llm::RunConfig build_config(const std::string& config_path, const Overrides& o) {
  llm::RunConfig c = config_path.empty() ? llm::RunConfig{} : llm::load_run_config(config_path);
  if (o.prompt) c.prompt = *o.prompt;
  if (o.model) c.model = *o.model;
  if (o.tokenizer) c.tokenizer = *o.tokenizer;
  if (o.models_dir) c.models_dir = *o.models_dir;
  if (o.log_level) c.log_level = *o.log_level;
  if (o.device) c.device = *o.device;
  if (o.dtype) c.dtype = *o.dtype;
  if (o.max_tokens) c.max_tokens = *o.max_tokens;
  if (o.top_k) c.sampling.top_k = *o.top_k;
  if (o.threads) c.threads = *o.threads;
  if (o.tensor_parallel) c.tensor_parallel = *o.tensor_parallel;
  if (o.temperature) c.sampling.temperature = *o.temperature;
  if (o.top_p) c.sampling.top_p = *o.top_p;
  if (o.seed) c.sampling.seed = *o.seed;
  if (o.backends) c.backend_order = *o.backends;
  c.plugin_dirs.insert(c.plugin_dirs.begin(), o.plugin_dirs.begin(), o.plugin_dirs.end());
  for (const auto& f : o.fail_backend) {
    llm::parse_injected_failure(f);  // a bad form is an error naming it
    c.fail_backend.push_back(f);
  }
  c.check_output.insert(c.check_output.end(), o.check_output.begin(), o.check_output.end());
  llm::set_log_level(c.log_level);
  return c;
}

void print_stats(const llm::Engine& engine, const std::vector<llm::GenerationResult>& results) {
  size_t prompt_tokens = 0, generated = 0, decode_steps = 0;
  for (const auto& r : results) {
    prompt_tokens += r.prompt_tokens.size();
    generated += r.tokens.size();
    decode_steps += r.decode_steps();
  }
  const auto& first = results.front();
  std::string backends;
  for (const auto& b : first.backends) backends += (backends.empty() ? "" : " -> ") + b;
  const std::string stop = results.size() == 1 ? llm::stop_reason_name(first.stop) : "per sequence";
  const double prefill = first.prefill_seconds > 0 ? prompt_tokens / first.prefill_seconds : 0.0;
  const double decode = first.decode_seconds > 0 ? decode_steps / first.decode_seconds : 0.0;
  const std::string memory = engine.memory_stats();
  std::string device = engine.device() == "cuda" ? "cuda" : "cpu, threads " + std::to_string(engine.threads());
  if (engine.tensor_parallel() > 1) device += ", tensor parallel " + std::to_string(engine.tensor_parallel());
  std::fprintf(stderr,
               "stats: %zu sequence(s), prompt %zu tokens, generated %zu tokens (stop: %s); prefill %.1f tok/s, "
               "decode %.1f tok/s; attention: %s; device %s%s%s\n",
               results.size(), prompt_tokens, generated, stop.c_str(), prefill, decode, backends.c_str(),
               device.c_str(), memory.empty() ? "" : "; ", memory.c_str());
}

std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw llm::Error("--prompts " + path + ": cannot open");
  std::vector<std::string> prompts;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) prompts.push_back(line);
  if (prompts.empty()) throw llm::Error("--prompts " + path + ": no prompts (one a line, empty lines skipped)");
  return prompts;
}

int run_generate(const llm::RunConfig& config, const std::optional<std::string>& prompts_file) {
  if (!prompts_file) {
    llm::Engine engine(config);
    std::fputs(config.prompt.c_str(), stdout);
    std::fflush(stdout);
    auto r = engine.generate(config.prompt, engine.generation_options(), [](const std::string& text) {
      std::fputs(text.c_str(), stdout);
      std::fflush(stdout);
    });
    std::fputs("\n", stdout);
    std::fflush(stdout);
    print_stats(engine, {r});
    return 0;
  }
  // A batch: outputs are printed apart and in prompt order once every sequence has finished.
  const std::vector<std::string> prompts = read_prompts(*prompts_file);
  llm::Engine engine(config, static_cast<int>(prompts.size()));
  auto results = engine.generate_batch(prompts, engine.generation_options());
  for (size_t i = 0; i < results.size(); ++i)
    std::printf("%s--- %zu ---\n%s%s\n", i ? "\n" : "", i + 1, prompts[i].c_str(), results[i].text.c_str());
  std::fflush(stdout);
  print_stats(engine, results);
  return 0;
}

int run_backends(const llm::RunConfig& config, bool as_json) {
  const auto dirs = llm::plugin_search_dirs(config.plugin_dirs);
  const auto candidates = llm::load_plugins(dirs, config.require_digest);
  const int threads = llm::resolve_threads(config.threads);
  llm_device_info device = llm::cpu_device_info(threads);
  llm_dtype dtype = LLM_DTYPE_F32;
#if LLM_HAVE_CUDA
  // Probe against the GPU the run would use.
  const llm::cuda::DeviceStatus gpu = llm::cuda::probe_device(0);
  if (config.device != "cpu" && gpu.usable) {
    device = llm::cuda::device_info(gpu);
    llm::DType t = llm::DType::BF16;
    llm::parse_dtype(config.dtype, t);
    dtype = llm::sdk_dtype(t);
  }
#endif

  // Probe against the configured model's shape when there is one.
  std::unique_ptr<llm::Checkpoint> checkpoint;
  std::string no_probe;
  if (config.model.empty()) {
    no_probe = "no model configured (use --config or --model)";
  } else {
    try {
      checkpoint =
          llm::Checkpoint::open(llm::resolve_model_path(config.model, llm::resolve_models_dir(config.models_dir)));
    } catch (const llm::Error& e) {
      no_probe = e.what();
    }
  }
  nlohmann::json out = {{"search_dirs", dirs},
                        {"device", device.name},
                        {"abi", {LLM_ABI_VERSION_MAJOR, LLM_ABI_VERSION_MINOR}},
                        {"plugins", nlohmann::json::array()}};
  for (const auto& c : candidates) {
    nlohmann::json j = {{"path", c.path}, {"loaded", c.plugin != nullptr}};
    if (!c.plugin) {
      j["rejected"] = c.rejection;
    } else {
      const auto& t = c.plugin->iface();
      j.update({{"name", c.plugin->name()},
                {"version", c.plugin->version()},
                {"abi", {t.abi_major, t.abi_minor}},
                {"device", llm::device_kind_name(t.device_kind)},
                {"priority", t.priority}});
      if (checkpoint) {
        const auto& mc = checkpoint->config();
        llm_attention_shape shape = llm::attention_shape(mc, mc.max_seq_len, 1);
        shape.dtype = dtype;
        auto v = llm::probe_plugin(c.plugin, device, shape);
        nlohmann::json flags = nlohmann::json::array();
        for (auto [bit, flag] : {std::pair{LLM_CAP_PREFILL, "prefill"},
                                 {LLM_CAP_DECODE, "decode"},
                                 {LLM_CAP_CUDA_GRAPH_SAFE, "cuda_graph_safe"},
                                 {LLM_CAP_PAGED_KV, "paged_kv"},
                                 {LLM_CAP_DETERMINISTIC, "deterministic"}})
          if (v.capabilities & bit) flags.push_back(flag);
        j["probe"] = {
            {"supported", v.supported}, {"reason", v.reason}, {"capabilities", v.capabilities}, {"flags", flags}};
      } else {
        j["probe"] = {{"supported", nullptr}, {"reason", "not run: " + no_probe}};
      }
    }
    out["plugins"].push_back(j);
  }
  if (as_json) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::cout << "searched: " << fmt::format("{}", fmt::join(dirs, ", ")) << "\n";
  std::cout << fmt::format("{:<12} {:<8} {:<5} {:<6} {:<10} {}\n", "BACKEND", "VERSION", "ABI", "DEVICE", "PROBE",
                           "PATH / REASON");
  for (const auto& j : out["plugins"]) {
    if (!j["loaded"]) {
      std::cout << fmt::format("{:<12} {:<8} {:<5} {:<6} {:<10} {}\n      rejected: {}\n", "-", "-", "-", "-",
                               "not loaded", j["path"].get<std::string>(), j["rejected"].get<std::string>());
      continue;
    }
    const auto& p = j["probe"];
    std::string verdict = p["supported"].is_null() ? "not run" : p["supported"].get<bool>() ? "supported" : "no";
    std::cout << fmt::format("{:<12} {:<8} {:<5} {:<6} {:<10} {}\n", j["name"].get<std::string>(),
                             j["version"].get<std::string>(),
                             fmt::format("{}.{}", j["abi"][0].get<int>(), j["abi"][1].get<int>()),
                             j["device"].get<std::string>(), verdict, j["path"].get<std::string>());
    if (!p["reason"].get<std::string>().empty())
      std::cout << "      reason: " << p["reason"].get<std::string>() << "\n";
  }
  if (candidates.empty()) std::cout << "(no plugin files found)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"llm-runner: Llama-family text generation with plugin attention backends"};
  app.set_version_flag("--version", std::string("llm-runner ") + LLM_VERSION_STRING + " (plugin ABI " +
                                        std::to_string(LLM_ABI_VERSION_MAJOR) + "." +
                                        std::to_string(LLM_ABI_VERSION_MINOR) + ")");
  std::string config_path;
  Overrides o;
  add_common_options(app, config_path, o);
  app.add_option("--prompt", o.prompt, "prompt text");
  app.add_option("--prompts", o.prompts_file, "file of prompts, one a line, generated together as a batch")
      ->check(CLI::ExistingFile);
  app.add_option("--max-tokens", o.max_tokens, "new tokens to generate")->check(CLI::Range(1, 1 << 22));
  app.add_option("--temperature", o.temperature, "sampling temperature (0: greedy)")->check(CLI::Range(0.0, 100.0));
  app.add_option("--top-k", o.top_k, "keep the k most likely tokens (0: off)")->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", o.top_p, "nucleus sampling threshold in (0, 1]")->check(CLI::Range(0.0, 1.0));
  app.add_option("--seed", o.seed, "random seed for sampling");

  CLI::App* backends =
      app.add_subcommand("backends", "list every plugin found, its version, ABI, device and probe verdict");
  std::string backends_config;
  Overrides bo;
  bool as_json = false;
  add_common_options(*backends, backends_config, bo);
  backends->add_flag("--json", as_json, "machine-readable output");

  CLI11_PARSE(app, argc, argv);
  try {
    if (*backends) return run_backends(build_config(backends_config, bo), as_json);
    if (o.top_p && *o.top_p <= 0.0f) throw llm::Error("--top-p must be in (0, 1], got 0");
    return run_generate(build_config(config_path, o), o.prompts_file);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "llm-runner: error: %s\n", e.what());
    return 1;
  }
}
