// The Llama forward pass on the GPU: weights uploaded once in the model dtype (bf16, fp16 or fp32; Q8_0
// dequantized on upload), an fp32 residual stream, cuBLAS products with fp32 accumulation, fused kernels
// for the element-wise steps, attention through the backend chain on a device KV cache in the model dtype,
// and argmax on the GPU (folded into the classifier where it takes the CUDA-core kernel) so that a greedy
// step copies back a pick per sequence, not the logits.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <functional>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "backend_chain.h"
#include "checkpoint.h"
#include "cuda_allocator.h"
#include "cuda_device.h"
#include "device_collective.h"
#include "dtype.h"
#include "gemv.h"
#include "language_model.h"
#include "sampling.h"
#include "tensor_parallel.h"

namespace llm::cuda {

// One rank of a tensor-parallel group on the GPU (tensor_parallel.h): its plan, its share of the weights
// and its all-reduce. All three must outlive the model.
struct CudaRank {
  const ShardPlan* plan = nullptr;
  const ModelWeights* weights = nullptr;
  DeviceCollective* collective = nullptr;
};

// What decode attention may overlap by default (LLM_OVERLAP_* bits), from a layer's q/k/v and output
// weights (bytes, this rank's) and the step: early start where the q/k/v product hides the cached tiles'
// copies, early next at one token on the CUDA-core products where the output product's weights stream
// within attention's tail. The bounds are measured (llama_cuda.cpp).
uint32_t auto_decode_overlap(double qkv_weight_bytes, double wo_weight_bytes, int tokens, bool cuda_core_products);

class LlamaCuda : public LanguageModel, public AttentionBridge {
 public:
  // Uploads the weights of `checkpoint` (which must outlive the model) to `device`. With `tp`, the model is
  // one rank of a tensor-parallel group: it holds and attends over its rank's heads and SwiGLU rows (its
  // chain must be built for tp->plan->local), sums its partial projections through tp->collective, and
  // every rank of the group must run each forward call together, each from a thread of its own. Only
  // rank 0 computes logits; the others return none (forward: nullptr; forward_argmax: ids untouched).
  LlamaCuda(const Checkpoint& checkpoint, std::unique_ptr<BackendChain> chain, const DeviceStatus& device, DType dtype,
            int max_batch, int max_context, const CudaRank* tp = nullptr);
  ~LlamaCuda() override;

  const ModelConfig& config() const override { return config_; }
  int max_batch() const override { return max_batch_; }
  int max_context() const override { return max_context_; }
  const float* forward(const std::vector<SequenceChunk>& chunks) override;
  void forward_argmax(const std::vector<SequenceChunk>& chunks, int* ids) override;
  // The steps run back to back in one CUDA graph per (sequences, steps), each step's embedding reading the
  // ids the step before picked on the device; one upload of every step's positions before, one copy of
  // the ids after. Without graphs (or under tensor parallelism) the steps go one by one.
  void forward_argmax_steps(const std::vector<SequenceChunk>& chunks, int steps, int* ids) override;
  int greedy_steps_ahead() const override;
  // The pass, then the pick on the device (sampling.h); one id per sequence comes back, not the logits.
  void forward_sample(const std::vector<SequenceChunk>& chunks, const SamplingParams& params, const float* uniforms,
                      int* ids) override;
  static constexpr int kMaxStepsAhead = 8;
  // Greedy decode steps a graph launch runs unless LLM_STEPS_AHEAD says otherwise: 4 measured 3-5% faster
  // than 1 at batch 1 on stories110M and level on the larger shapes (H200, 2026-12-01, docs/PERFORMANCE.md).
  static constexpr int kDefaultStepsAhead = 4;
  std::string attention_backend() const override { return chain_->active_name(); }
  std::vector<std::string> attention_backends_used() const override { return chain_->served_by(); }

  DType dtype() const { return dtype_; }
  const CachingAllocator& allocator() const { return *alloc_; }
  // Decode steps are captured in a CUDA graph per batch size and replayed when every backend left in the
  // chain is graph-safe; off: every step is launched kernel by kernel.
  void set_use_graphs(bool on) { use_graphs_ = on; }
  int graph_replays() const { return graph_replays_; }  // decode steps replayed from graphs
  // Steps of at most this many tokens take the fused matrix-vector kernels (gemv.h), longer ones cuBLAS;
  // 0: cuBLAS always. At most kGemvMaxTokens, and at most what the kernel in use takes for the dtype
  // (gemv_max_tokens: 4 for fp32 and for the CUDA-core kernel, 16 otherwise).
  void set_gemv_max_tokens(int n);
  // Which matrix-vector kernel decode steps take (gemv.h); the default comes from LLM_GEMV.
  void set_gemv_kernel(GemvKernel kernel);
  GemvKernel gemv_kernel() const { return gemv_kernel_; }
  // Whether the CUDA-core products take the RMSNorm before them (default); off only to measure the gain.
  void set_fuse_norm(bool on);
  // Whether, at one token, the residual adds (and the embedding) prepare the next norm's input for the
  // product after them, where the products take the norm (default, or LLM_PREPARED_NORM=0 for off: the
  // product then norms the fp32 residual itself; gemv.h). Off under tensor parallelism (the residual is
  // whole only after the all-reduce).
  void set_prepare_norm(bool on);
  bool prepare_norm() const { return prepare_norm_; }
  // Whether a one-token step's SwiGLU stages rows in shared memory where gemv_stages_swiglu says it can
  // (default, or LLM_GEMV_STAGE=off for off: gemv.h). Never changes the logits.
  void set_stage_swiglu(bool on);
  // Whether greedy steps fold the pick into the classifier's launch where its product takes the CUDA-core
  // kernel (gemv.h, GemvEpilogue::ArgmaxF32; default, or LLM_ARGMAX_FOLD=0 for off: argmax_rows after it).
  // Never changes the ids.
  void set_fold_argmax(bool on);
  // Whether a step of `tokens` tokens in `chunks` sequences folds it (one token a sequence, CUDA-core products).
  bool folds_argmax(int tokens, int chunks) const;
  // What decode attention may overlap with the products around it (llm_attention_args.overlap,
  // LLM_OVERLAP_* bits): kOverlapAuto (default, or LLM_DECODE_OVERLAP) picks from the model's shape where it
  // measured a gain; otherwise these bits for every decode step. Never changes the results.
  static constexpr int kOverlapAuto = -1;
  void set_decode_overlap(int overlap);
  // The bits a decode step of `tokens` tokens offers (cuda_core_products: its products take the CUDA-core
  // kernel).
  uint32_t decode_overlap(int tokens, bool cuda_core_products) const;
  // For measurement: the step `chunks` run `steps` times, each enqueued without waiting for the one before,
  // then one wait. What the GPU alone takes a step, without the host's round trip for each token's id.
  void run_back_to_back(const std::vector<SequenceChunk>& chunks, int steps);

  // AttentionBridge: CPU backends serve a GPU model through a host mirror of the KV cache (fp32, filled
  // incrementally: only positions not mirrored yet are copied), the queries copied down and the output up.
  const llm_attention_args& to_host(const llm_attention_args& args) override;
  void from_host(const llm_attention_args& args) override;

 private:
  struct DeviceMatrix {
    void* data = nullptr;
    int rows = 0, cols = 0;
  };
  struct DeviceLayer {
    float *rms_att = nullptr, *rms_ffn = nullptr;
    DeviceMatrix wq, wk, wv, wo, w1, w2, w3;
  };

  DeviceMatrix upload(const Matrix& m);
  float* upload_f32(const float* data, size_t count);
  void* alloc(size_t bytes, AllocTag tag);
  void release(void* p);
  void grow_buffers(int tokens, int chunks);
  // Metadata to the device: `steps` blocks, block s for the chunks' tokens at their positions + s.
  void stage(const std::vector<SequenceChunk>& chunks, int steps = 1);
  size_t meta_block_ints() const;  // one block's ints (the layout is in stage)
  // The forward pass on stream_ for metadata block `step`; its tokens: the block's, or for step > 0 the
  // ids step - 1 picked. Its argmax goes to ids_ + step * cap_chunks_, or where folds_argmax, to its keys
  // in argmax_keys_ (which the step's embedding clears first).
  void enqueue(int tokens, int chunks, int max_q_len, int max_kv_len, int step = 0);
  // The matrix-vector kernel a step of `tokens` tokens takes (gemv_kernel_ resolved for this model's width).
  GemvKernel step_kernel(int tokens) const { return gemv_resolve(gemv_kernel_, dtype_, config_.dim, tokens); }
  // The picks of `steps` steps of n sequences, copied back into pinned_ids_ [step][sequence] (waits).
  void copy_picks(int n, int steps, bool folded);
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    int tokens = 0;
  };
  // Captures `body` (enqueues on stream_) into g; false, with graphs turned off and the reason logged,
  // where a backend failed or the chain moved on during the capture (nothing was enqueued then).
  bool capture(Graph& g, const std::function<void()>& body);
  void gemm(const DeviceMatrix& w, const void* x, int tokens, void* y, bool y_f32, float beta);
  void run(const std::vector<SequenceChunk>& chunks);
  // Sums a partial projection (tokens x dim, in x_) over the tensor-parallel group; nothing without one.
  void all_reduce(int tokens);

  ModelConfig config_;
  ModelConfig local_;  // the attention side this model holds: config_, or its rank's share under tp
  CudaRank tp_;
  int device_ = 0;
  bool head_ = true;  // computes the logits (rank 0, or no tensor parallelism)
  std::unique_ptr<BackendChain> chain_;
  DType dtype_;
  int max_batch_, max_context_;
  std::unique_ptr<CachingAllocator> alloc_;
  std::vector<void*> owned_;  // every block this model allocated and keeps (returned in the destructor)
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  void* cublas_workspace_ = nullptr;

  // weights
  DeviceMatrix embedding_, classifier_;
  std::vector<DeviceLayer> layers_;
  float* rms_final_ = nullptr;
  float* rope_ = nullptr;  // [position][head_dim/2][cos, sin]
  // KV cache: [layer][slot][position][kv_dim] in dtype_
  void *k_cache_ = nullptr, *v_cache_ = nullptr;
  int64_t layer_stride_ = 0, seq_stride_ = 0;

  // activations, sized for the largest batch seen
  int cap_tokens_ = 0, cap_chunks_ = 0;
  float* x_ = nullptr;                               // (tokens, dim) residual stream, fp32
  void* xb_ = nullptr;                               // (tokens, dim) normed input / attention output, dtype
  void *q_ = nullptr, *k_ = nullptr, *v_ = nullptr;  // dtype
  float *h1_ = nullptr, *h3_ = nullptr;              // (tokens, hidden) fp32
  void* hb_ = nullptr;                               // (tokens, hidden) dtype
  void* last_ = nullptr;                             // (chunks, dim) dtype
  void* xn_ = nullptr;       // (tokens, dim) dtype: the next RMSNorm's gain * residual (set_prepare_norm)
  float* parts_ = nullptr;   // its partial sums of squares, one per block of the kernel that wrote it
  float* logits_ = nullptr;  // (chunks, vocab)
  int32_t* meta_ = nullptr;  // device: tokens, pos, slot [tokens]; q_start [chunks+1], kv_len, seq_slot, last [chunks]
  int32_t* ids_ = nullptr;   // device argmax output [step][chunks]
  uint64_t* argmax_keys_ = nullptr;  // [step][chunks][kArgmaxTokenWords]: the picks folded by the classifier
  // A view of pinned host memory (freed by the model).
  struct PinnedInts {
    PinnedInts() = default;
    PinnedInts(int32_t* p, size_t n) : p_(p), n_(n) {}
    int32_t* data() { return p_; }
    const int32_t* data() const { return p_; }
    size_t size() const { return n_; }
    bool empty() const { return n_ == 0; }

   private:
    int32_t* p_ = nullptr;
    size_t n_ = 0;
  };
  PinnedInts host_meta_;
  std::vector<float> host_logits_;
  int32_t* pinned_ids_ = nullptr;
  uint64_t* pinned_keys_ = nullptr;  // argmax_keys_ copied back
  // forward_sample: the workspace (grown on the first sampling step, as every buffer on its first step),
  // the uniforms (pinned, then on the device) and the picks
  SamplingWorkspace sampling_;
  void* sampling_memory_ = nullptr;
  float* pinned_uniforms_ = nullptr;
  float* uniforms_ = nullptr;
  int32_t* sampled_ = nullptr;

  bool use_graphs_ = true;
  int gemv_max_tokens_ = kGemvMaxTokens;
  GemvKernel gemv_kernel_ = GemvKernel::Auto;
  bool fuse_norm_ = true;
  bool prepare_norm_ = true;
  bool stage_swiglu_ = true;
  bool fold_argmax_ = true;
  int decode_overlap_ = kOverlapAuto;
  std::vector<Graph> graphs_;                         // by chunk count, decode only
  std::map<std::pair<int, int>, Graph> step_graphs_;  // forward_argmax_steps: by (chunk count, steps)
  int steps_ahead_ = kDefaultStepsAhead;              // greedy_steps_ahead (LLM_STEPS_AHEAD; docs/GPU.md)
  bool sample_on_host_ = false;                       // LLM_SAMPLE_ON_HOST=1: forward_sample picks on the host
  std::string graph_backend_;                         // the backend the graphs were captured with
  int graph_replays_ = 0;
  // Whether a decode step's residual adds prepare the next norm's input for the products that take it:
  // not under tensor parallelism (the residual is whole only after the all-reduce).
  bool adds_prepare_norm() const { return fuse_norm_ && prepare_norm_ && !tp_.collective; }
  void drop_graphs();
  void drop_stale_graphs();  // drop_graphs where the chain's active backend is not the graphs'
  // ids[s * chunks + k] = pinned_ids_ likewise, for `steps` steps of picks copied back; throws where one is
  // outside the vocabulary (logits with no number in them), naming the sequence and step.
  void take_picks(const std::vector<SequenceChunk>& chunks, int steps, int* ids, const char* verb = "pick") const;

  // the bridge's host side
  std::vector<float> host_k_, host_v_;  // [layer][slot][position][kv_dim]
  std::vector<int> mirrored_;           // [layer][slot]: positions [0, n) are mirrored
  std::vector<float> host_q_, host_out_;
  std::vector<char> host_stage_;  // rows in the model dtype on their way
  llm_kv_cache_view host_view_{};
  llm_attention_args host_args_{};
  void to_f32(const void* src, size_t n, float* dst);
  void from_f32(const float* src, size_t n, void* dst);
};

}  // namespace llm::cuda
