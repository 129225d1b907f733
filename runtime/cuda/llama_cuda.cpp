#include "llama_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "argmax_key.h"
#include "cuda_check.h"
#include "cuda_kernels.h"
#include "error.h"
#include "gemv.h"
#include "log.h"

namespace llm::cuda {
namespace {

cudaDataType cuda_type(DType t) { return t == DType::F32 ? CUDA_R_32F : t == DType::F16 ? CUDA_R_16F : CUDA_R_16BF; }

// cuBLAS needs its own workspace to be captured in a graph without allocating (32 MiB suits Hopper).
constexpr size_t kCublasWorkspace = size_t{32} << 20;

// LLM_STEPS_AHEAD (greedy_steps_ahead; kDefaultStepsAhead when unset), read before anything is allocated.
int steps_ahead_from_env() {
  const char* v = std::getenv("LLM_STEPS_AHEAD");
  if (!v || !*v) return LlamaCuda::kDefaultStepsAhead;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (*end || n < 1 || n > LlamaCuda::kMaxStepsAhead)
    fail("LLM_STEPS_AHEAD='{}': expected greedy decode steps per graph launch, 1 to {}", v, LlamaCuda::kMaxStepsAhead);
  return static_cast<int>(n);
}

// LLM_SAMPLE_ON_HOST=1: sampling steps copy the logits out and pick on the host, as before, for comparison.
bool sample_on_host_from_env() {
  const char* v = std::getenv("LLM_SAMPLE_ON_HOST");
  return v && std::string(v) == "1";
}

// A switch that is on unless the variable says 0: LLM_PREPARED_NORM (the next norm's input prepared in the
// residual adds at one token), LLM_ARGMAX_FOLD (the greedy pick folded into the classifier).
bool on_unless_env_says_0(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v || std::string(v) == "1") return true;
  if (std::string(v) == "0") return false;
  fail("{}='{}': expected 0 or 1", name, v);
}

// LLM_DECODE_OVERLAP: what decode attention may overlap (llm_attention_args.overlap): auto (or unset),
// off, start, next or start+next.
int decode_overlap_from_env() {
  const char* v = std::getenv("LLM_DECODE_OVERLAP");
  if (!v || !*v || std::string(v) == "auto") return LlamaCuda::kOverlapAuto;
  const std::string s(v);
  if (s == "off") return 0;
  if (s == "start") return LLM_OVERLAP_EARLY_START;
  if (s == "next") return LLM_OVERLAP_EARLY_NEXT;
  if (s == "start+next") return LLM_OVERLAP_EARLY_START | LLM_OVERLAP_EARLY_NEXT;
  fail("LLM_DECODE_OVERLAP='{}': expected auto, off, start, next or start+next", v);
}

// Where auto lets decode attention overlap the products around it, from end-to-end decode on the H200
// (docs/PERFORMANCE.md; bf16, batch 1 and 8, stories110M / TinyLlama / Llama-2-7B shapes):
// - early start: attention copies its cached tiles while the q/k/v product streams. It paid where that
//   product is long enough to hide the copies and the early launch: TinyLlama (10.5 MB of weights a layer)
//   +2-3%, 7B (101 MB) +1-2%, at both batches; stories110M (3.5 MB) lost 8%.
// - early next: the output product streams its weights during attention's tail. It paid only at one token
//   (CUDA-core products) and where those weights fit the tail: TinyLlama's 8.4 MB +5% on top of the early
//   start; 7B's 33.5 MB -5%; batch 8 -1% to -32%. (flash_cuda now lets the product start as attention
//   does, so that its loads are done before attention's tail: TinyLlama +1%; the rule is unchanged.)
constexpr double kEarlyStartMinQkvBytes = 8e6;
constexpr double kEarlyNextMaxWoBytes = 16e6;

}  // namespace

uint32_t auto_decode_overlap(double qkv_weight_bytes, double wo_weight_bytes, int tokens, bool cuda_core_products) {
  if (qkv_weight_bytes < kEarlyStartMinQkvBytes) return 0;
  const bool next = tokens == 1 && cuda_core_products && wo_weight_bytes <= kEarlyNextMaxWoBytes;
  return LLM_OVERLAP_EARLY_START | (next ? LLM_OVERLAP_EARLY_NEXT : 0u);
}

LlamaCuda::LlamaCuda(const Checkpoint& checkpoint, std::unique_ptr<BackendChain> chain, const DeviceStatus& device,
                     DType dtype, int max_batch, int max_context, const CudaRank* tp)
    : config_(checkpoint.config()),
      local_(tp ? tp->plan->local : config_),
      tp_(tp ? *tp : CudaRank{}),
      device_(device.index),
      head_(!tp || tp->plan->rank == 0),
      chain_(std::move(chain)),
      dtype_(dtype),
      max_batch_(max_batch),
      max_context_(max_context),
      alloc_(std::make_unique<CachingAllocator>(device.index)),
      gemv_kernel_(gemv_kernel_from_env()),
      prepare_norm_(on_unless_env_says_0("LLM_PREPARED_NORM")),
      stage_swiglu_(gemv_stage_from_env()),
      fold_argmax_(on_unless_env_says_0("LLM_ARGMAX_FOLD")),
      decode_overlap_(decode_overlap_from_env()),
      steps_ahead_(steps_ahead_from_env()),
      sample_on_host_(sample_on_host_from_env()) {
  LLM_CUDA_CHECK(cudaSetDevice(device.index));
  LLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  LLM_CUBLAS_CHECK(cublasCreate(&cublas_));
  LLM_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  // Default math: CUBLAS_COMPUTE_32F below already keeps fp32 products in fp32 (no TF32); pedantic mode
  // would also bar the fast GEMV paths (measured 96 tok/s on a Llama-2-7B shape with it).
  LLM_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  cublas_workspace_ = alloc(kCublasWorkspace, AllocTag::Workspace);
  LLM_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspace));
  LLM_CUDA_CHECK(cudaMallocHost(&pinned_ids_, sizeof(int32_t) * max_batch_ * kMaxStepsAhead));
  LLM_CUDA_CHECK(cudaMallocHost(&pinned_keys_, sizeof(uint64_t) * max_batch_ * kMaxStepsAhead * kArgmaxTokenWords));
  chain_->set_bridge(this);
  if (chain_->has_injected_failures()) {
    use_graphs_ = false;
    log().info("failure injection is on: decode steps run without CUDA graphs, so every call is counted");
  }

  // Weights, once, in the model dtype (norms stay fp32).
  const ModelWeights& w = tp ? *tp->weights : checkpoint.weights();
  embedding_ = upload(w.token_embedding);
  if (head_)  // the other ranks of a group compute no logits
    classifier_ =
        config_.shared_classifier && w.classifier.f32 == w.token_embedding.f32 && w.classifier.q == w.token_embedding.q
            ? embedding_
            : upload(w.classifier);
  for (const LayerWeights& L : w.layers) {
    DeviceLayer d;
    d.rms_att = upload_f32(L.rms_att, config_.dim);
    d.rms_ffn = upload_f32(L.rms_ffn, config_.dim);
    d.wq = upload(L.wq), d.wk = upload(L.wk), d.wv = upload(L.wv), d.wo = upload(L.wo);
    d.w1 = upload(L.w1), d.w2 = upload(L.w2), d.w3 = upload(L.w3);
    layers_.push_back(d);
  }
  rms_final_ = upload_f32(w.rms_final, config_.dim);

  const std::vector<float> rope = rope_table(config_, max_context_);  // the CPU's table, bit for bit
  rope_ = upload_f32(rope.data(), rope.size());

  // The KV cache, in the model dtype.
  seq_stride_ = static_cast<int64_t>(max_context_) * local_.kv_dim();
  layer_stride_ = seq_stride_ * max_batch_;
  const size_t cache_bytes = static_cast<size_t>(layer_stride_) * config_.n_layers * dtype_size(dtype_);
  k_cache_ = alloc(cache_bytes, AllocTag::KvCache);
  v_cache_ = alloc(cache_bytes, AllocTag::KvCache);
  LLM_CUDA_CHECK(cudaMemsetAsync(k_cache_, 0, cache_bytes, stream_));
  LLM_CUDA_CHECK(cudaMemsetAsync(v_cache_, 0, cache_bytes, stream_));
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  log().info(
      "GPU model on {}{}: {} weights, KV cache {:.1f} MiB ({} slots x {} positions); {}", device.name,
      tp ? fmt::format(" (device {}, tensor-parallel rank {} of {})", device_, tp->plan->rank, tp->plan->world) : "",
      dtype_name(dtype_), 2.0 * cache_bytes / (1 << 20), max_batch_, max_context_, alloc_->stats_line());
  if (gemv_kernel_ != GemvKernel::Auto)
    log().info("decode-step products: the {} matrix-vector kernel (LLM_GEMV)", gemv_kernel_name(gemv_kernel_));
  const uint32_t one = decode_overlap(1, gemv_normalizes_input(step_kernel(1), dtype_, 1));
  std::string overlap;
  if (one & LLM_OVERLAP_EARLY_START) overlap = "starts during the q/k/v product";
  if (one & LLM_OVERLAP_EARLY_NEXT)
    overlap += std::string(overlap.empty() ? "" : ", ") + "lets the output product start (one token a step)";
  if (!overlap.empty())
    log().info("decode attention {}, where its backend takes it (LLM_DECODE_OVERLAP: {})", overlap,
               decode_overlap_ == kOverlapAuto ? "auto, from the model's shape" : "set");
  if (adds_prepare_norm() && gemv_stages_swiglu(step_kernel(1), dtype_, layers_.front().w1.cols, stage_swiglu_))
    log().info("one-token decode steps: SwiGLU's blocks stage rows in shared memory (LLM_GEMV_STAGE=off turns it off)");
}

void LlamaCuda::set_gemv_max_tokens(int n) {
  gemv_max_tokens_ = std::clamp(n, 0, kGemvMaxTokens);
  drop_graphs();  // captured with the other path
}

void LlamaCuda::set_fuse_norm(bool on) {
  fuse_norm_ = on;
  drop_graphs();
}

void LlamaCuda::set_prepare_norm(bool on) {
  prepare_norm_ = on;
  drop_graphs();
}

void LlamaCuda::set_stage_swiglu(bool on) {
  stage_swiglu_ = on;
  drop_graphs();
}

void LlamaCuda::set_fold_argmax(bool on) {
  fold_argmax_ = on;
  drop_graphs();
}

void LlamaCuda::set_decode_overlap(int overlap) {
  decode_overlap_ = overlap;
  drop_graphs();
}

uint32_t LlamaCuda::decode_overlap(int tokens, bool cuda_core_products) const {
  if (decode_overlap_ != kOverlapAuto) return static_cast<uint32_t>(decode_overlap_);
  if (layers_.empty()) return 0;
  const DeviceLayer& L = layers_.front();
  const double e = static_cast<double>(dtype_size(dtype_));
  return auto_decode_overlap(e * L.wq.cols * (static_cast<double>(L.wq.rows) + L.wk.rows + L.wv.rows),
                             e * L.wo.rows * L.wo.cols, tokens, cuda_core_products);
}

void LlamaCuda::set_gemv_kernel(GemvKernel kernel) {
  gemv_kernel_ = kernel;
  drop_graphs();
}

void LlamaCuda::drop_graphs() {
  for (auto& g : graphs_)
    if (g.exec) cudaGraphExecDestroy(g.exec);
  graphs_.clear();
  for (auto& [key, g] : step_graphs_)
    if (g.exec) cudaGraphExecDestroy(g.exec);
  step_graphs_.clear();
}

// Graphs replay the kernels of the backend they were captured with: a new active backend needs new ones.
void LlamaCuda::drop_stale_graphs() {
  if ((!graphs_.empty() || !step_graphs_.empty()) && chain_->active_name() != graph_backend_) drop_graphs();
}

LlamaCuda::~LlamaCuda() {
  cudaSetDevice(device_);
  drop_graphs();
  if (pinned_ids_) cudaFreeHost(pinned_ids_);
  if (pinned_keys_) cudaFreeHost(pinned_keys_);
  if (pinned_uniforms_) cudaFreeHost(pinned_uniforms_);
  if (!host_meta_.empty()) cudaFreeHost(host_meta_.data());
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamSynchronize(stream_);
  chain_.reset();  // plugin contexts go before the memory they were given
  for (void* p : owned_) alloc_->deallocate(p);
  alloc_.reset();
  if (stream_) cudaStreamDestroy(stream_);
}

void* LlamaCuda::alloc(size_t bytes, AllocTag tag) {
  void* p = alloc_->allocate(bytes, stream_, tag);
  owned_.push_back(p);
  return p;
}

void LlamaCuda::release(void* p) {
  if (!p) return;
  owned_.erase(std::find(owned_.begin(), owned_.end(), p));
  alloc_->deallocate(p);
}

float* LlamaCuda::upload_f32(const float* data, size_t count) {
  auto* d = static_cast<float*>(alloc(count * sizeof(float), AllocTag::Weights));
  LLM_CUDA_CHECK(cudaMemcpy(d, data, count * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}

LlamaCuda::DeviceMatrix LlamaCuda::upload(const Matrix& m) {
  DeviceMatrix d;
  d.rows = m.rows, d.cols = m.cols;
  const size_t n = static_cast<size_t>(m.rows) * m.cols;
  d.data = alloc(n * dtype_size(dtype_), AllocTag::Weights);
  if (m.type == WeightType::Q8_0 && m.cols % m.group_size == 0) {
    // Int8 values and their scales go up in slabs of whole rows (whole groups) and are dequantized there.
    const int slab_rows = std::max(1, static_cast<int>((size_t{64} << 20) / m.cols));
    const size_t slab = static_cast<size_t>(std::min(slab_rows, m.rows)) * m.cols;
    auto* q = static_cast<int8_t*>(alloc(slab, AllocTag::Workspace));
    auto* scales = static_cast<float*>(alloc(slab / m.group_size * sizeof(float), AllocTag::Workspace));
    for (int r0 = 0; r0 < m.rows; r0 += slab_rows) {
      const size_t first = static_cast<size_t>(r0) * m.cols;
      const size_t count = static_cast<size_t>(std::min(slab_rows, m.rows - r0)) * m.cols;
      LLM_CUDA_CHECK(cudaMemcpyAsync(q, m.q + first, count, cudaMemcpyHostToDevice, stream_));
      LLM_CUDA_CHECK(cudaMemcpyAsync(scales, m.scales + first / m.group_size, count / m.group_size * sizeof(float),
                                     cudaMemcpyHostToDevice, stream_));
      dequantize_q8(q, scales, m.group_size, static_cast<int64_t>(count),
                    static_cast<char*>(d.data) + first * dtype_size(dtype_), dtype_, stream_);
    }
    LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    release(q);
    release(scales);
    return d;
  }
  // fp32 rows (and Q8_0 whose rows split quantization groups, dequantized here) go up in slabs and are
  // converted to the dtype on the device.
  const int slab_rows = std::max(1, static_cast<int>((size_t{16} << 20) / (sizeof(float) * m.cols)));
  std::vector<float> host(static_cast<size_t>(std::min(slab_rows, m.rows)) * m.cols);
  auto* staging = static_cast<float*>(alloc(host.size() * sizeof(float), AllocTag::Workspace));
  for (int r0 = 0; r0 < m.rows; r0 += slab_rows) {
    const int nr = std::min(slab_rows, m.rows - r0);
    for (int r = 0; r < nr; ++r) m.dequantize_row(r0 + r, host.data() + static_cast<size_t>(r) * m.cols);
    const size_t count = static_cast<size_t>(nr) * m.cols;
    LLM_CUDA_CHECK(cudaMemcpyAsync(staging, host.data(), count * sizeof(float), cudaMemcpyHostToDevice, stream_));
    convert_from_f32(staging, static_cast<int64_t>(count),
                     static_cast<char*>(d.data) + static_cast<size_t>(r0) * m.cols * dtype_size(dtype_), dtype_,
                     stream_);
    LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));  // `host` is reused for the next slab
  }
  release(staging);
  return d;
}

void LlamaCuda::grow_buffers(int tokens, int chunks) {
  if (tokens <= cap_tokens_ && chunks <= cap_chunks_) return;
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (void* p : {static_cast<void*>(x_), xb_, q_, k_, v_, static_cast<void*>(h1_), static_cast<void*>(h3_), hb_, last_,
                  xn_, static_cast<void*>(parts_), static_cast<void*>(logits_), static_cast<void*>(meta_),
                  static_cast<void*>(ids_), static_cast<void*>(argmax_keys_)})
    release(p);
  drop_graphs();  // graphs hold the old addresses
  cap_tokens_ = std::max(tokens, cap_tokens_);
  cap_chunks_ = std::max(chunks, cap_chunks_);
  const size_t t = cap_tokens_, c = cap_chunks_, e = dtype_size(dtype_);
  const ModelConfig& m = config_;
  x_ = static_cast<float*>(alloc(t * m.dim * sizeof(float), AllocTag::Activations));
  xb_ = alloc(t * m.dim * e, AllocTag::Activations);
  const ModelConfig& h = local_;  // attention heads and SwiGLU rows: this rank's
  q_ = alloc(t * h.dim * e, AllocTag::Activations);
  k_ = alloc(t * h.kv_dim() * e, AllocTag::Activations);
  v_ = alloc(t * h.kv_dim() * e, AllocTag::Activations);
  h1_ = static_cast<float*>(alloc(t * h.hidden_dim * sizeof(float), AllocTag::Activations));
  h3_ = static_cast<float*>(alloc(t * h.hidden_dim * sizeof(float), AllocTag::Activations));
  hb_ = alloc(t * h.hidden_dim * e, AllocTag::Activations);
  last_ = alloc(c * m.dim * e, AllocTag::Activations);
  xn_ = alloc(t * m.dim * e, AllocTag::Activations);
  parts_ =
      static_cast<float*>(alloc(gemv_next_parts_capacity(m.dim, cap_tokens_) * sizeof(float), AllocTag::Activations));
  logits_ = static_cast<float*>(alloc(c * m.vocab_size * sizeof(float), AllocTag::Activations));
  meta_ = static_cast<int32_t*>(alloc(kMaxStepsAhead * meta_block_ints() * sizeof(int32_t), AllocTag::Activations));
  ids_ = static_cast<int32_t*>(alloc(kMaxStepsAhead * c * sizeof(int32_t), AllocTag::Activations));
  argmax_keys_ =
      static_cast<uint64_t*>(alloc(kMaxStepsAhead * c * kArgmaxTokenWords * sizeof(uint64_t), AllocTag::Activations));
}

// y = W x for `tokens` rows of x: W (rows, cols) row-major in dtype, x (tokens, cols) dtype, y (tokens, rows)
// fp32 (y_f32) or dtype; beta = 1 adds into y (the residual).
void LlamaCuda::gemm(const DeviceMatrix& w, const void* x, int tokens, void* y, bool y_f32, float beta) {
  const float alpha = 1.0f;
  const cudaDataType t = cuda_type(dtype_);
  LLM_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, w.rows, tokens, w.cols, &alpha, w.data, t, w.cols, x,
                                t, w.cols, &beta, y, y_f32 ? CUDA_R_32F : t, w.rows, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
}

size_t LlamaCuda::meta_block_ints() const { return 3 * static_cast<size_t>(cap_tokens_) + 4 * cap_chunks_ + 1; }

void LlamaCuda::stage(const std::vector<SequenceChunk>& chunks, int steps) {
  const int tokens = check_chunks(chunks, config_, max_batch_, max_context_);
  const int c = static_cast<int>(chunks.size());
  grow_buffers(tokens, c);
  // Layout of a block (offsets in ints): tokens | pos | slot (each cap_tokens_) | q_start (cap_chunks_ + 1) |
  // kv_len | seq_slot | last (each cap_chunks_): fixed offsets, so captured graphs find fresh values on
  // replay. Block s holds the same chunks s positions on (forward_argmax_steps).
  const size_t block = meta_block_ints(), meta_ints = block * kMaxStepsAhead;
  if (host_meta_.size() != meta_ints) {  // pinned, so the upload is a true async copy
    if (!host_meta_.empty()) cudaFreeHost(host_meta_.data());
    int32_t* p = nullptr;
    LLM_CUDA_CHECK(cudaMallocHost(&p, meta_ints * sizeof(int32_t)));
    host_meta_ = PinnedInts(p, meta_ints);
  }
  std::fill(host_meta_.data(), host_meta_.data() + block * steps, 0);
  for (int s = 0; s < steps; ++s) {
    int32_t* tok = host_meta_.data() + s * block;
    int32_t* pos = tok + cap_tokens_;
    int32_t* slot = pos + cap_tokens_;
    int32_t* q_start = slot + cap_tokens_;
    int32_t* kv_len = q_start + cap_chunks_ + 1;
    int32_t* seq_slot = kv_len + cap_chunks_;
    int32_t* last = seq_slot + cap_chunks_;
    int t = 0;
    for (int i = 0; i < c; ++i) {
      const auto& ch = chunks[i];
      for (size_t j = 0; j < ch.tokens.size(); ++j, ++t) {
        tok[t] = ch.tokens[j];  // (steps after the first take the ids picked on the device instead)
        pos[t] = ch.start_pos + s + static_cast<int>(j);
        slot[t] = ch.slot;
      }
      q_start[i + 1] = t;
      kv_len[i] = ch.start_pos + s + static_cast<int>(ch.tokens.size());
      seq_slot[i] = ch.slot;
      last[i] = t - 1;
    }
  }
  if (!mirrored_.empty())  // positions rewritten from start_pos on: the host mirror is stale there
    for (const auto& ch : chunks)
      for (int l = 0; l < config_.n_layers; ++l) {
        int& m = mirrored_[static_cast<size_t>(l) * max_batch_ + ch.slot];
        m = std::min(m, ch.start_pos);
      }
  LLM_CUDA_CHECK(
      cudaMemcpyAsync(meta_, host_meta_.data(), block * steps * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
}

void LlamaCuda::all_reduce(int tokens) {
  if (tp_.collective)  // a group of one too: its all-reduce is a copy, and the path is the same
    tp_.collective->all_reduce_sum(x_, static_cast<size_t>(tokens) * config_.dim, stream_);
}

void LlamaCuda::enqueue(int tokens, int chunks, int max_q_len, int max_kv_len, int step) {
  const ModelConfig& c = config_;
  const ModelConfig& h = local_;  // this rank's heads and SwiGLU rows (all of them without tensor parallelism)
  // Under tensor parallelism each rank's output and down products are partial sums over its heads and
  // rows: rank 0 adds its share into the residual stream and the others write theirs over their copy, so
  // that the all-reduce that follows leaves x + the sum of all shares on every rank.
  const bool add_into_residual = head_;
  const int32_t* block = meta_ + step * meta_block_ints();
  const int32_t* tok = step == 0 ? block : ids_ + (step - 1) * cap_chunks_;  // (ids of one-token chunks)
  const int32_t* pos = block + cap_tokens_;
  const int32_t* slot = pos + cap_tokens_;
  const int32_t* q_start = slot + cap_tokens_;
  const int32_t* kv_len = q_start + cap_chunks_ + 1;
  const int32_t* seq_slot = kv_len + cap_chunks_;
  const int32_t* last = seq_slot + cap_chunks_;
  const size_t e = dtype_size(dtype_);

  // The CUDA-core products take the RMSNorm before them. At one token, without tensor parallelism,
  // the kernel that writes the residual (the embedding, a residual add) also writes the next norm's input
  // for them: xn = gain * x in the dtype and parts_ its partial sums of squares (gemv.h).
  const int gemv_tokens = std::min(gemv_max_tokens_, gemv_max_tokens(gemv_kernel_, dtype_));
  const bool gemv_path = tokens <= gemv_tokens && chunks <= gemv_tokens;
  const GemvKernel kernel = step_kernel(tokens);
  const bool cuda_core = gemv_path && gemv_normalizes_input(kernel, dtype_, tokens);  // the CUDA-core products
  // The norm in the product (no RMSNorm launch): from the fp32 residual (fused_norm) or, in a decode step,
  // prepared by the residual add before (prepared: the CUDA-core kernel at one token, the tensor-core one
  // at any count; prefills of a few tokens keep the RMSNorm launches, as a group of ranks does, whose
  // residual adds are partial sums before the all-reduce).
  const bool fused_norm = fuse_norm_ && cuda_core;
  const bool prepared =
      gemv_path && max_q_len == 1 && adds_prepare_norm() && gemv_prepares_norm(kernel, dtype_, tokens);
  const bool norm_in_product = fused_norm || prepared;
  // A one-token step whose SwiGLU stages rows keeps every SM in the largest shared-memory split (gemv.h).
  const bool max_shared = prepared && tokens == 1 && gemv_stages_swiglu(kernel, dtype_, c.dim, stage_swiglu_);
  int parts = 0;  // partial sums in parts_ (prepared)
  EmbedNextNorm first;
  if (prepared) first.gain = layers_[0].rms_att, first.x = xn_, first.parts = parts_, parts = 1;
  // Where the classifier folds the pick, this step's keys start at zero and the step before's are its tokens.
  const size_t keys_per_step = static_cast<size_t>(cap_chunks_) * kArgmaxTokenWords;
  uint64_t* step_keys = folds_argmax(tokens, chunks) ? argmax_keys_ + step * keys_per_step : nullptr;
  EmbedKeys keys;
  keys.clear = step_keys;
  if (step_keys && step > 0) keys.picked = step_keys - keys_per_step;
  embed(tok, tokens, embedding_.data, dtype_, c.dim, c.vocab_size, x_, stream_, first, keys);

  llm_kv_cache_view view{};
  view.struct_size = sizeof(view);
  view.layout = LLM_KV_LAYOUT_CONTIGUOUS;
  view.dtype = sdk_dtype(dtype_);
  view.device_kind = LLM_DEVICE_CUDA;
  view.seq_stride = seq_stride_;
  view.token_stride = h.kv_dim();
  view.head_stride = c.head_dim();
  llm_attention_args args = packed_attention_args(h, tokens, chunks, max_q_len, max_kv_len, sdk_dtype(dtype_));
  args.q = q_;
  args.out = xb_;
  args.q_start = q_start;
  args.kv_len = kv_len;
  args.seq_slot = seq_slot;
  args.kv = &view;
  args.stream = stream_;
  // Decode may overlap the products around it (every step begins with the embedding's plain launch, so the
  // cached entries are final when a step starts: the SDK's promise for LLM_OVERLAP_EARLY_START).
  if (max_q_len == 1) args.overlap = decode_overlap(tokens, cuda_core);

  // Decode steps (up to 16 tokens: a batch of sequences a token each) stream the weights through the
  // fused matrix-vector kernels (gemv_path); longer steps (prefill) go through cuBLAS. The products take
  // the RMSNorm before them into their own launch (norm_in_product): from the input prepared for them by
  // the residual add before (prepared), or else, on the CUDA-core kernel, from the fp32 residual and the
  // norm's gain (fused_norm).
  GemvArgs qkv;
  if (gemv_path) {
    qkv.rows[0] = h.dim, qkv.rows[1] = h.kv_dim(), qkv.rows[2] = h.kv_dim();
    qkv.cols = c.dim;
    qkv.x = xb_;
    qkv.tokens = tokens;
    qkv.out = q_;
    qkv.head_dim = c.head_dim();
    qkv.cos_sin = rope_;
    qkv.pos = pos;
    qkv.slot = slot;
    qkv.seq_stride = seq_stride_;
    qkv.max_shared = max_shared;
  }
  // The norm a fused product takes: prepared (x = xn_, parts_), or from the residual x_ and `gain`.
  auto take_norm = [&](GemvArgs& a, const float* gain) {
    a.norm_eps = c.rms_norm_eps;
    if (prepared) {
      a.x = xn_, a.norm_parts = parts_, a.norm_parts_count = parts;
    } else {
      a.x = x_, a.norm_gain = gain;
    }
  };
  // y (+)= W x through whichever path this step takes; y fp32. With norm_gain (fused_norm only), x is the
  // residual and the product takes the RMSNorm. A residual add (prepared) writes the input of the norm
  // with gain next_gain for the product after it.
  // With argmax_keys (gemv_path only), the product also folds each token's pick into them.
  auto product_f32 = [&](const DeviceMatrix& w, const void* x, int n, float* y, bool add,
                         const float* norm_gain = nullptr, const float* next_gain = nullptr,
                         uint64_t* argmax_keys = nullptr) {
    if (!gemv_path) return gemm(w, x, n, y, true, add ? 1.0f : 0.0f);
    GemvArgs a;
    a.w[0] = w.data, a.rows[0] = w.rows, a.cols = w.cols, a.x = x, a.tokens = n, a.out = y;
    if (norm_gain) take_norm(a, norm_gain);
    if (prepared && next_gain) a.next_gain = next_gain, a.next_x = xn_, a.next_parts = parts_;
    a.argmax_keys = argmax_keys;
    a.max_shared = max_shared;
    const GemvEpilogue epilogue = add           ? GemvEpilogue::AddF32
                                  : argmax_keys ? GemvEpilogue::ArgmaxF32
                                                : GemvEpilogue::StoreF32;
    const int blocks = gemv(epilogue, a, dtype_, stream_, kernel);
    if (a.next_x) {
      if (blocks * n > gemv_next_parts_capacity(c.dim, cap_tokens_))
        fail("gemv: {} partial sums for a buffer of {}", blocks * n, gemv_next_parts_capacity(c.dim, cap_tokens_));
      parts = blocks;
    }
  };

  for (int l = 0; l < c.n_layers; ++l) {
    const DeviceLayer& L = layers_[l];
    void* k_cache = static_cast<char*>(k_cache_) + static_cast<size_t>(l) * layer_stride_ * e;
    void* v_cache = static_cast<char*>(v_cache_) + static_cast<size_t>(l) * layer_stride_ * e;

    // attention rmsnorm, q/k/v products, RoPE with k and v written into the cache
    if (norm_in_product) {
      take_norm(qkv, L.rms_att);
    } else {
      rmsnorm(x_, nullptr, tokens, L.rms_att, c.dim, c.rms_norm_eps, xb_, dtype_, stream_);
    }
    if (gemv_path) {
      qkv.w[0] = L.wq.data, qkv.w[1] = L.wk.data, qkv.w[2] = L.wv.data;
      qkv.k_cache = k_cache, qkv.v_cache = v_cache;
      gemv(GemvEpilogue::QkvRope, qkv, dtype_, stream_, kernel);
    } else {
      gemm(L.wq, xb_, tokens, q_, false, 0.0f);
      gemm(L.wk, xb_, tokens, k_, false, 0.0f);
      gemm(L.wv, xb_, tokens, v_, false, 0.0f);
      rope_and_cache(q_, k_, v_, pos, slot, tokens, h.n_heads, h.n_kv_heads, h.head_dim(), rope_, k_cache, v_cache,
                     seq_stride_, dtype_, stream_);
    }

    // attention through the chain, into xb; then the output product added into the residual
    view.k = k_cache;
    view.v = v_cache;
    args.layer = l;
    if (max_q_len == 1)
      chain_->decode(args);
    else
      chain_->prefill(args);
    product_f32(L.wo, xb_, tokens, x_, add_into_residual, nullptr, L.rms_ffn);
    all_reduce(tokens);

    // ffn rmsnorm, SwiGLU, down product added into the residual
    if (!norm_in_product) rmsnorm(x_, nullptr, tokens, L.rms_ffn, c.dim, c.rms_norm_eps, xb_, dtype_, stream_);
    if (gemv_path) {
      GemvArgs a;
      a.w[0] = L.w1.data, a.w[1] = L.w3.data, a.rows[0] = L.w1.rows, a.cols = L.w1.cols;
      a.x = xb_, a.tokens = tokens, a.out = hb_;
      a.max_shared = max_shared;
      if (norm_in_product) take_norm(a, L.rms_ffn);
      gemv(GemvEpilogue::Swiglu, a, dtype_, stream_, kernel);
    } else {
      gemm(L.w1, xb_, tokens, h1_, true, 0.0f);
      gemm(L.w3, xb_, tokens, h3_, true, 0.0f);
      swiglu(h1_, h3_, static_cast<int64_t>(tokens) * h.hidden_dim, hb_, dtype_, stream_);
    }
    product_f32(L.w2, hb_, tokens, x_, add_into_residual, nullptr,
                l + 1 < c.n_layers ? layers_[l + 1].rms_att : rms_final_);
    all_reduce(tokens);
  }
  if (!head_) return;

  // final rmsnorm of each chunk's last token, classifier, argmax (the norm fused when every chunk is one
  // token: the last tokens are then the rows of x as they are; the argmax folded into the classifier where
  // it takes it)
  if (norm_in_product && tokens == chunks) {
    product_f32(classifier_, x_, chunks, logits_, false, rms_final_, nullptr, step_keys);
  } else {
    rmsnorm(x_, last, chunks, rms_final_, c.dim, c.rms_norm_eps, last_, dtype_, stream_);
    product_f32(classifier_, last_, chunks, logits_, false, nullptr, nullptr, step_keys);
  }
  if (!step_keys) argmax_rows(logits_, chunks, c.vocab_size, ids_ + step * cap_chunks_, stream_);
}

bool LlamaCuda::folds_argmax(int tokens, int chunks) const {
  const int gemv_tokens = std::min(gemv_max_tokens_, gemv_max_tokens(gemv_kernel_, dtype_));
  return fold_argmax_ && head_ && tokens == chunks && tokens <= gemv_tokens &&
         gemv_folds_argmax(step_kernel(tokens), dtype_, tokens);
}

void LlamaCuda::copy_picks(int n, int steps, bool folded) {
  if (!folded) {
    const size_t row = n * sizeof(int32_t);
    LLM_CUDA_CHECK(cudaMemcpy2DAsync(pinned_ids_, row, ids_, cap_chunks_ * sizeof(int32_t), row, steps,
                                     cudaMemcpyDeviceToHost, stream_));
    LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return;
  }
  const size_t row = n * kArgmaxTokenWords * sizeof(uint64_t);
  LLM_CUDA_CHECK(cudaMemcpy2DAsync(pinned_keys_, row, argmax_keys_, cap_chunks_ * kArgmaxTokenWords * sizeof(uint64_t),
                                   row, steps, cudaMemcpyDeviceToHost, stream_));
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (int i = 0; i < steps * n; ++i)
    pinned_ids_[i] = argmax_key_row(argmax_top_key(pinned_keys_ + static_cast<size_t>(i) * kArgmaxTokenWords));
}

void LlamaCuda::run(const std::vector<SequenceChunk>& chunks) {
  LLM_CUDA_CHECK(cudaSetDevice(device_));  // ranks of a group run on threads of their own, a device each
  stage(chunks);
  const int n = static_cast<int>(chunks.size());
  int tokens = 0, max_q = 0, max_kv = 0;
  for (const auto& ch : chunks) {
    tokens += static_cast<int>(ch.tokens.size());
    max_q = std::max(max_q, static_cast<int>(ch.tokens.size()));
    max_kv = std::max(max_kv, ch.start_pos + static_cast<int>(ch.tokens.size()));
  }
  const bool decode = max_q == 1;
  drop_stale_graphs();
  const bool graphable = use_graphs_ && decode && (chain_->active_capabilities() & LLM_CAP_CUDA_GRAPH_SAFE);
  if (!graphable) {
    enqueue(tokens, n, max_q, max_kv);
    return;
  }
  // Decode: one graph per batch size, captured with the session's bounds and replayed every step.
  if (graphs_.size() <= static_cast<size_t>(n)) graphs_.resize(n + 1);
  Graph& g = graphs_[n];
  if (!g.exec) {
    if (!capture(g, [&] { enqueue(tokens, n, 1, max_context_); })) {
      enqueue(tokens, n, max_q, max_kv);
      return;
    }
    g.tokens = tokens;
    log().debug("captured the decode step for {} sequence(s) in a CUDA graph", n);
  }
  LLM_CUDA_CHECK(cudaGraphLaunch(g.exec, stream_));
  ++graph_replays_;
}

bool LlamaCuda::capture(Graph& g, const std::function<void()>& body) {
  cudaGraph_t graph = nullptr;
  chain_->begin_capture();
  const std::string backend = chain_->active_name();
  LLM_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  std::string problem;
  try {
    body();
  } catch (const std::exception& e) {
    problem = e.what();
  }
  chain_->end_capture();
  const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
  if (!problem.empty() || ended != cudaSuccess || chain_->active_name() != backend) {
    // A backend failed (or the chain moved on) while capturing: no graphs from here on, the caller runs
    // the step eagerly (the chain has already logged the failure).
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    log().warn("decode step could not be captured in a CUDA graph ({}); running without graphs",
               problem.empty() ? "the backend changed during capture" : problem);
    use_graphs_ = false;
    drop_graphs();
    return false;
  }
  graph_backend_ = backend;
  LLM_CUDA_CHECK(cudaGraphInstantiate(&g.exec, graph, 0));
  LLM_CUDA_CHECK(cudaGraphDestroy(graph));
  return true;
}

int LlamaCuda::greedy_steps_ahead() const { return use_graphs_ && head_ && !tp_.collective ? steps_ahead_ : 1; }

void LlamaCuda::forward_argmax_steps(const std::vector<SequenceChunk>& chunks, int steps, int* ids) {
  check_steps(chunks, steps, max_context_);
  drop_stale_graphs();
  const bool graphable = steps > 1 && steps <= kMaxStepsAhead && static_cast<int>(chunks.size()) <= max_batch_ &&
                         use_graphs_ && head_ && !tp_.collective &&
                         (chain_->active_capabilities() & LLM_CAP_CUDA_GRAPH_SAFE);
  if (!graphable) return LanguageModel::forward_argmax_steps(chunks, steps, ids);
  LLM_CUDA_CHECK(cudaSetDevice(device_));
  stage(chunks, steps);
  const int n = static_cast<int>(chunks.size());
  Graph& g = step_graphs_[{n, steps}];
  if (!g.exec) {
    if (!capture(g, [&] {
          for (int s = 0; s < steps; ++s) enqueue(n, n, 1, max_context_, s);
        }))
      return LanguageModel::forward_argmax_steps(chunks, steps, ids);  // (graphs are off now: step by step)
    g.tokens = n;
    log().debug("captured {} decode steps for {} sequence(s) in a CUDA graph", steps, n);
  }
  LLM_CUDA_CHECK(cudaGraphLaunch(g.exec, stream_));
  graph_replays_ += steps;
  copy_picks(n, steps, folds_argmax(n, n));
  take_picks(chunks, steps, ids);
}

void LlamaCuda::forward_sample(const std::vector<SequenceChunk>& chunks, const SamplingParams& params,
                               const float* uniforms, int* ids) {
  if (!(params.temperature > 0.0f) || !head_ || tp_.collective || sample_on_host_)
    return LanguageModel::forward_sample(chunks, params, uniforms, ids);
  run(chunks);
  const int n = static_cast<int>(chunks.size()), vocab = config_.vocab_size;
  if (sampling_.rows() < n) {  // room for every sequence the model holds, once
    LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (void* p : {sampling_memory_, static_cast<void*>(uniforms_), static_cast<void*>(sampled_)})
      if (p) release(p);
    const int rows = std::max(n, max_batch_);
    sampling_memory_ = alloc(SamplingWorkspace::bytes(rows, vocab), AllocTag::Workspace);
    sampling_.carve(sampling_memory_, rows, vocab, stream_);
    uniforms_ = static_cast<float*>(alloc(rows * sizeof(float), AllocTag::Workspace));
    sampled_ = static_cast<int32_t*>(alloc(rows * sizeof(int32_t), AllocTag::Workspace));
    if (pinned_uniforms_) cudaFreeHost(pinned_uniforms_);
    LLM_CUDA_CHECK(cudaMallocHost(&pinned_uniforms_, rows * sizeof(float)));
  }
  std::copy(uniforms, uniforms + n, pinned_uniforms_);
  LLM_CUDA_CHECK(cudaMemcpyAsync(uniforms_, pinned_uniforms_, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
  sample_rows(logits_, n, vocab, params, uniforms_, sampling_, sampled_, stream_);
  LLM_CUDA_CHECK(cudaMemcpyAsync(pinned_ids_, sampled_, n * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  take_picks(chunks, 1, ids, "sample from");
}

void LlamaCuda::forward_argmax(const std::vector<SequenceChunk>& chunks, int* ids) {
  run(chunks);
  if (!head_) {
    LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return;
  }
  int tokens = 0;
  for (const auto& ch : chunks) tokens += static_cast<int>(ch.tokens.size());
  const int n = static_cast<int>(chunks.size());
  copy_picks(n, 1, folds_argmax(tokens, n));
  take_picks(chunks, 1, ids);
}

// argmax finds no id where no logit is a number above -FLT_MAX (and in a run, the steps after such an id
// took a NaN embedding: the first step without one is named).
void LlamaCuda::take_picks(const std::vector<SequenceChunk>& chunks, int steps, int* ids, const char* verb) const {
  const size_t n = chunks.size();
  for (int s = 0; s < steps; ++s)
    for (size_t k = 0; k < n; ++k) {
      const int id = pinned_ids_[s * n + k];
      if (id < 0 || id >= config_.vocab_size) {
        const std::string at = steps > 1 ? fmt::format(" at step {} of {}", s + 1, steps) : "";
        fail("the GPU's logits for sequence {} (slot {}){} hold no number to {}: NaN or infinite throughout", k,
             chunks[k].slot, at, verb);
      }
      ids[s * n + k] = id;
    }
}

void LlamaCuda::run_back_to_back(const std::vector<SequenceChunk>& chunks, int steps) {
  // The same metadata each time: rewriting the pinned copy while an earlier upload is pending changes nothing.
  for (int i = 0; i < steps; ++i) run(chunks);
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

const float* LlamaCuda::forward(const std::vector<SequenceChunk>& chunks) {
  run(chunks);
  if (!head_) {
    LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return nullptr;
  }
  host_logits_.resize(chunks.size() * static_cast<size_t>(config_.vocab_size));
  LLM_CUDA_CHECK(cudaMemcpyAsync(host_logits_.data(), logits_, host_logits_.size() * sizeof(float),
                                 cudaMemcpyDeviceToHost, stream_));
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return host_logits_.data();
}

void LlamaCuda::to_f32(const void* src, size_t n, float* dst) {
  if (dtype_ == DType::F32) {
    std::memcpy(dst, src, n * sizeof(float));
  } else if (dtype_ == DType::BF16) {
    const auto* b = static_cast<const uint16_t*>(src);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t bits = static_cast<uint32_t>(b[i]) << 16;
      std::memcpy(&dst[i], &bits, sizeof(float));
    }
  } else {
    const auto* h = static_cast<const __half*>(src);
    for (size_t i = 0; i < n; ++i) dst[i] = __half2float(h[i]);
  }
}

void LlamaCuda::from_f32(const float* src, size_t n, void* dst) {
  if (dtype_ == DType::F32) {
    std::memcpy(dst, src, n * sizeof(float));
  } else if (dtype_ == DType::BF16) {
    auto* b = static_cast<__nv_bfloat16*>(dst);
    for (size_t i = 0; i < n; ++i) b[i] = __float2bfloat16_rn(src[i]);
  } else {
    auto* h = static_cast<__half*>(dst);
    for (size_t i = 0; i < n; ++i) h[i] = __float2half_rn(src[i]);
  }
}

const llm_attention_args& LlamaCuda::to_host(const llm_attention_args& args) {
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the new K/V rows and q are written
  const ModelConfig& c = local_;                   // the heads this model holds
  const size_t kv_dim = c.kv_dim(), e = dtype_size(dtype_);
  if (host_k_.empty()) {
    log().info("attention served on the host: mirroring the KV cache ({:.1f} MiB)",
               2.0 * layer_stride_ * c.n_layers * sizeof(float) / (1 << 20));
    host_k_.assign(static_cast<size_t>(layer_stride_) * c.n_layers, 0.0f);
    host_v_.assign(host_k_.size(), 0.0f);
    mirrored_.assign(static_cast<size_t>(c.n_layers) * max_batch_, 0);
  }
  const int l = args.layer;
  const int32_t* q_start = host_meta_.data() + 3 * cap_tokens_;
  const int32_t* kv_len = q_start + cap_chunks_ + 1;
  const int32_t* seq_slot = kv_len + cap_chunks_;
  // Positions this call reads that the mirror lacks: copied down once, converted to fp32.
  for (int i = 0; i < args.num_seqs; ++i) {
    int& have = mirrored_[static_cast<size_t>(l) * max_batch_ + seq_slot[i]];
    if (kv_len[i] <= have) continue;
    const size_t first = static_cast<size_t>(l) * layer_stride_ + static_cast<size_t>(seq_slot[i]) * seq_stride_ +
                         static_cast<size_t>(have) * kv_dim;
    const size_t count = static_cast<size_t>(kv_len[i] - have) * kv_dim;
    host_stage_.resize(count * e);
    for (auto [dev, host] : {std::pair{k_cache_, &host_k_}, {v_cache_, &host_v_}}) {
      LLM_CUDA_CHECK(cudaMemcpyAsync(host_stage_.data(), static_cast<const char*>(dev) + first * e, count * e,
                                     cudaMemcpyDeviceToHost, stream_));
      LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
      to_f32(host_stage_.data(), count, host->data() + first);
    }
    have = kv_len[i];
  }
  const size_t q_count = static_cast<size_t>(args.total_q_tokens) * c.dim;
  host_stage_.resize(q_count * e);
  LLM_CUDA_CHECK(cudaMemcpyAsync(host_stage_.data(), args.q, q_count * e, cudaMemcpyDeviceToHost, stream_));
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  host_q_.resize(q_count);
  host_out_.resize(q_count);
  to_f32(host_stage_.data(), q_count, host_q_.data());

  host_view_ = *args.kv;
  host_view_.dtype = LLM_DTYPE_F32;
  host_view_.device_kind = LLM_DEVICE_CPU;
  host_view_.k = host_k_.data() + static_cast<size_t>(l) * layer_stride_;
  host_view_.v = host_v_.data() + static_cast<size_t>(l) * layer_stride_;
  host_args_ = args;
  host_args_.dtype = LLM_DTYPE_F32;
  host_args_.q = host_q_.data();
  host_args_.out = host_out_.data();
  host_args_.q_start = q_start;
  host_args_.kv_len = kv_len;
  host_args_.seq_slot = seq_slot;
  host_args_.kv = &host_view_;
  host_args_.stream = nullptr;
  host_args_.overlap = 0;  // (host backends wait for the copies anyway)
  return host_args_;
}

void LlamaCuda::from_host(const llm_attention_args& args) {
  const size_t count = host_out_.size(), e = dtype_size(dtype_);
  host_stage_.resize(count * e);
  from_f32(host_out_.data(), count, host_stage_.data());
  // On the model's stream, and waited for: a pageable copy may return before its DMA lands.
  LLM_CUDA_CHECK(cudaMemcpyAsync(args.out, host_stage_.data(), count * e, cudaMemcpyHostToDevice, stream_));
  LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

}  // namespace llm::cuda
