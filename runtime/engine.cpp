#include "engine.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "backend_chain.h"
#include "cpu_ops.h"
#include "error.h"
#include "llama_cpu.h"
#include "log.h"
#include "models_dir.h"
#include "tensor_parallel.h"
#include "tensor_parallel_model.h"
#if LLM_HAVE_CUDA
#include <cuda_runtime.h>

#include "cuda_check.h"
#include "cuda_device.h"
#include "llama_cuda.h"
#include "nccl_group.h"
#endif

namespace llm {

namespace {

// The tokenizer a model brings when the config names none: a GGUF's own vocabulary, or a Hugging Face
// directory's tokenizer.model (SentencePiece) or tokenizer.json (byte-level BPE); a llama2.c checkpoint brings
// none.
std::string model_tokenizer(const Checkpoint& ck) {
  const std::string& path = ck.path();
  switch (ck.format()) {
    case CheckpointFormat::Gguf: return path;
    case CheckpointFormat::HfSafetensors: {
      const std::filesystem::path dir(path);
      if (std::filesystem::exists(dir / "tokenizer.model")) return (dir / "tokenizer.model").string();
      if (std::filesystem::exists(dir / "tokenizer.json")) return (dir / "tokenizer.json").string();
      fail(
          "{}: no tokenizer.model or tokenizer.json in the model directory; give one with model.tokenizer (or "
          "--tokenizer)",
          path);
    }
    default:
      fail(
          "config: 'model.tokenizer' (or --tokenizer) is required: {} is a {} checkpoint, which carries no "
          "tokenizer",
          path, checkpoint_format_name(ck.format()));
  }
}

}  // namespace

llm_device_info cpu_device_info(int threads, const ThreadPool* pool) {
  static const std::string name = [] {
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);)
      if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos)
        return line.substr(line.find(':') + 2);
    return std::string("CPU");
  }();
  llm_device_info d{};
  d.struct_size = sizeof(d);
  d.kind = LLM_DEVICE_CPU;
  d.num_threads = threads;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  d.total_memory_bytes = page * static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES));
  d.free_memory_bytes = page * static_cast<uint64_t>(sysconf(_SC_AVPHYS_PAGES));
  d.name = name.c_str();
  d.host = pool ? pool->services() : nullptr;
  return d;
}

llm_attention_shape attention_shape(const ModelConfig& config, int max_context, int max_batch) {
  llm_attention_shape s{};
  s.struct_size = sizeof(s);
  s.head_dim = config.head_dim();
  s.num_q_heads = config.n_heads;
  s.num_kv_heads = config.n_kv_heads;
  s.dtype = LLM_DTYPE_F32;
  s.max_context = max_context;
  s.max_batch = max_batch;
  s.kv_layout = LLM_KV_LAYOUT_CONTIGUOUS;
  return s;
}

int resolve_threads(int requested) {
  if (requested > 0) return requested;
  return std::max(1u, std::thread::hardware_concurrency());
}

Engine::Engine(const RunConfig& config, int max_batch)
    : config_(config), pool_(std::make_unique<ThreadPool>(resolve_threads(config.threads))) {
  validate_run_config(config_);
  const std::string models_dir = resolve_models_dir(config_.models_dir);
  const std::string model_path = resolve_model_path(config_.model, models_dir);
  std::string tokenizer_path = resolve_model_path(config_.tokenizer, models_dir);

  checkpoint_ = Checkpoint::open(model_path, config_.load == "memory" ? LoadMode::Memory : LoadMode::Mmap);
  const ModelConfig& mc = checkpoint_->config();
  log().info("model {}: {} (dim {}, {} layers, {} heads, {} kv heads, hidden {}, vocab {}, context {})", model_path,
             checkpoint_format_name(checkpoint_->format()), mc.dim, mc.n_layers, mc.n_heads, mc.n_kv_heads,
             mc.hidden_dim, mc.vocab_size, mc.max_seq_len);
  if (config_.tokenizer.empty()) tokenizer_path = model_tokenizer(*checkpoint_);
  tokenizer_ = load_tokenizer(tokenizer_path);
  if (tokenizer_->vocab_size() != mc.vocab_size)
    fail("tokenizer {} has {} tokens but model {} has a vocabulary of {}", tokenizer_path, tokenizer_->vocab_size(),
         model_path, mc.vocab_size);

  const int context = config_.max_context > 0 ? std::min(config_.max_context, mc.max_seq_len) : mc.max_seq_len;
  plugins_ = load_plugins(plugin_search_dirs(config_.plugin_dirs), config_.require_digest);
  std::vector<InjectedFailure> failures;
  for (const auto& f : config_.fail_backend) failures.push_back(parse_injected_failure(f));
  const llm_device_info cpu = cpu_device_info(pool_->size(), pool_.get());
  const llm_attention_shape cpu_shape = attention_shape(mc, context, max_batch);

  const int world = config_.tensor_parallel;
  if (world > 1) shard_plan(mc, world, 0);  // what does not divide is an error before anything is built

  // Where the model runs: `auto` takes a usable GPU, else the CPU, saying why.
  if (config_.device != "cpu") {
#if LLM_HAVE_CUDA
    const cuda::DeviceStatus gpu = cuda::probe_device(0);
    if (gpu.usable) {
      DType dtype = DType::BF16;
      parse_dtype(config_.dtype, dtype);
      if (world > 1) {
        model_ = cuda_tensor_parallel(world, dtype, max_batch, context, failures);
        device_ = "cuda";
        return;
      }
      llm_attention_shape shape = attention_shape(mc, context, max_batch);
      shape.dtype = sdk_dtype(dtype);
      // CPU backends can serve the GPU model too, through its host bridge.
      const BridgeTarget host{cpu, cpu_shape};
      auto chain = std::make_unique<BackendChain>(plugins_, config_.backend_order, cuda::device_info(gpu), shape, &host,
                                                  failures, config_.check_output);
      model_ = std::make_unique<cuda::LlamaCuda>(*checkpoint_, std::move(chain), gpu, dtype, max_batch, context);
      device_ = "cuda";
      return;
    }
    if (config_.device == "cuda") fail("device 'cuda' requested but {}", gpu.reason);
    log().info("device auto: no usable GPU ({}); running on the CPU", gpu.reason);
#else
    if (config_.device == "cuda")
      fail("device 'cuda' requested but this build has no CUDA support (no CUDA toolkit was found when it was built)");
    log().info("device auto: this build has no CUDA support; running on the CPU");
#endif
  }
  if (world > 1) {
    model_ = cpu_tensor_parallel(world, max_batch, context, failures);
    log().info("tensor parallel: {} ranks as CPU threads, {} query heads, {} KV heads and {} SwiGLU rows each", world,
               mc.n_heads / world, mc.n_kv_heads / world, mc.hidden_dim / world);
    return;
  }
  auto chain = std::make_unique<BackendChain>(plugins_, config_.backend_order, cpu, cpu_shape, nullptr, failures,
                                              config_.check_output);
  model_ = std::make_unique<LlamaCpu>(*checkpoint_, std::move(chain), *pool_, max_batch, context);
  log().info("running on {} with {} thread(s), {} kernels", cpu.name, pool_->size(), cpu::isa_name());
}

// The ranks of a CPU tensor-parallel group: a shard of the weights, a pool of the threads and a chain over
// the rank's heads each, summing through one in-process collective.
std::unique_ptr<LanguageModel> Engine::cpu_tensor_parallel(int world, int max_batch, int context,
                                                           const std::vector<InjectedFailure>& failures) {
  struct Ranks {
    explicit Ranks(int world) : collective(world) {}
    ThreadCollective collective;
    std::vector<ShardPlan> plans;
    std::vector<std::unique_ptr<ShardedWeights>> shards;
    std::vector<TensorParallelRank> ranks;
    std::vector<std::unique_ptr<ThreadPool>> pools;
  };
  auto state = std::make_shared<Ranks>(world);
  state->plans.reserve(world), state->ranks.reserve(world);  // pointers into them are handed out
  const ModelConfig& mc = checkpoint_->config();
  std::vector<std::unique_ptr<LanguageModel>> models;
  for (int r = 0; r < world; ++r) {
    state->plans.push_back(shard_plan(mc, world, r));
    state->shards.push_back(std::make_unique<ShardedWeights>(checkpoint_->weights(), mc, state->plans.back()));
    state->ranks.push_back({&state->plans.back(), &state->shards.back()->weights(), &state->collective});
    state->pools.push_back(std::make_unique<ThreadPool>(std::max(1, pool_->size() / world)));
    ThreadPool& pool = *state->pools.back();
    auto chain = std::make_unique<BackendChain>(plugins_, config_.backend_order, cpu_device_info(pool.size(), &pool),
                                                attention_shape(state->plans.back().local, context, max_batch), nullptr,
                                                failures, config_.check_output);
    models.push_back(
        std::make_unique<LlamaCpu>(*checkpoint_, std::move(chain), pool, max_batch, context, &state->ranks.back()));
  }
  Ranks* raw = state.get();
  return std::make_unique<TensorParallelModel>(
      std::move(models), [raw] { raw->collective.abort(); }, state);
}

#if LLM_HAVE_CUDA
// The ranks of a GPU tensor-parallel group: rank r on device r with its shard of the weights and a chain
// over its heads, summing through NCCL. The chains are built one after another (probes may fork); the
// weight shards are cut and uploaded by all ranks at once.
std::unique_ptr<LanguageModel> Engine::cuda_tensor_parallel(int world, DType dtype, int max_batch, int context,
                                                            const std::vector<InjectedFailure>& failures) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
  cudaGetLastError();
  if (count < world)
    fail("parallel.tensor {}: a rank per GPU needs {} GPUs, but {} {} present", world, world, count,
         count == 1 ? "is" : "are");
  struct Ranks {
    std::unique_ptr<cuda::NcclGroup> group;
    std::vector<cuda::DeviceStatus> gpus;
    std::vector<ShardPlan> plans;
    std::vector<BridgeTarget> hosts;
    std::vector<std::unique_ptr<ShardedWeights>> shards;
    std::vector<cuda::CudaRank> ranks;
  };
  auto state = std::make_shared<Ranks>();
  const ModelConfig& mc = checkpoint_->config();
  std::vector<int> devices;
  for (int r = 0; r < world; ++r) {
    state->gpus.push_back(cuda::probe_device(r));
    if (!state->gpus.back().usable)
      fail("parallel.tensor {}: rank {} cannot use GPU {}: {}", world, r, r, state->gpus.back().reason);
    devices.push_back(r);
  }
  state->group = std::make_unique<cuda::NcclGroup>(devices);
  state->plans.reserve(world), state->hosts.reserve(world), state->ranks.resize(world), state->shards.resize(world);
  const llm_device_info cpu = cpu_device_info(pool_->size(), pool_.get());
  std::vector<std::unique_ptr<BackendChain>> chains;
  for (int r = 0; r < world; ++r) {
    state->plans.push_back(shard_plan(mc, world, r));
    llm_attention_shape shape = attention_shape(state->plans.back().local, context, max_batch);
    state->hosts.push_back({cpu, shape});  // CPU backends serve a rank through its host bridge
    shape.dtype = sdk_dtype(dtype);
    LLM_CUDA_CHECK(cudaSetDevice(r));
    chains.push_back(std::make_unique<BackendChain>(plugins_, config_.backend_order, cuda::device_info(state->gpus[r]),
                                                    shape, &state->hosts.back(), failures, config_.check_output));
  }
  std::vector<std::unique_ptr<LanguageModel>> models(world);
  std::vector<std::string> errors(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        state->shards[r] = std::make_unique<ShardedWeights>(checkpoint_->weights(), mc, state->plans[r]);
        state->ranks[r] = {&state->plans[r], &state->shards[r]->weights(), &state->group->rank(r)};
        models[r] = std::make_unique<cuda::LlamaCuda>(*checkpoint_, std::move(chains[r]), state->gpus[r], dtype,
                                                      max_batch, context, &state->ranks[r]);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r)
    if (!errors[r].empty()) fail("parallel.tensor {}: rank {} (GPU {}): {}", world, r, r, errors[r]);
  log().info(
      "tensor parallel: {} ranks on GPUs 0-{}, {} query heads, {} KV heads and {} SwiGLU rows each; all-reduce "
      "through {}, small ones through {}",
      world, world - 1, mc.n_heads / world, mc.n_kv_heads / world, mc.hidden_dim / world, cuda::NcclGroup::version(),
      state->group->small_all_reduce());
  Ranks* raw = state.get();
  return std::make_unique<TensorParallelModel>(
      std::move(models), [raw] { raw->group->abort(); }, state);
}
#else
std::unique_ptr<LanguageModel> Engine::cuda_tensor_parallel(int, DType, int, int, const std::vector<InjectedFailure>&) {
  fail("this build has no CUDA support");
}
#endif

std::string Engine::memory_stats() const {
#if LLM_HAVE_CUDA
  if (auto* gpu = dynamic_cast<const cuda::LlamaCuda*>(model_.get())) return gpu->allocator().stats_line();
  if (auto* tp = dynamic_cast<const TensorParallelModel*>(model_.get())) {  // a line per GPU
    std::string lines;
    for (int r = 0; r < tp->world(); ++r)
      if (auto* gpu = dynamic_cast<const cuda::LlamaCuda*>(&tp->rank(r)))
        lines += fmt::format("{}GPU {}: {}", r ? "; " : "", r, gpu->allocator().stats_line());
    return lines;
  }
#endif
  return "";
}

Engine::~Engine() = default;

GenerationOptions Engine::generation_options() const {
  GenerationOptions o;
  o.max_tokens = config_.max_tokens;
  o.add_bos = config_.add_bos;
  o.stop_tokens = checkpoint_->eos_ids();
  o.sampling = config_.sampling;
  return o;
}

GenerationResult Engine::generate(const std::string& prompt, const GenerationOptions& options,
                                  const std::function<void(const std::string&)>& on_text) {
  return llm::generate(*model_, *tokenizer_, prompt, options, on_text);
}

std::vector<GenerationResult> Engine::generate_batch(const std::vector<std::string>& prompts,
                                                     const GenerationOptions& options,
                                                     const std::function<void(size_t, const std::string&)>& on_text) {
  return llm::generate_batch(*model_, *tokenizer_, prompts, options, on_text);
}

}  // namespace llm
