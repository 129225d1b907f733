// The Llama forward pass on the CPU, fp32 compute, attention through the backend chain.
#pragma once

#include <initializer_list>
#include <memory>
#include <vector>

#include "backend_chain.h"
#include "checkpoint.h"
#include "cpu_ops.h"
#include "kv_cache.h"
#include "language_model.h"
#include "tensor_parallel.h"

namespace llm {

// One rank of a tensor-parallel group (tensor_parallel.h): its plan, its share of the weights, and the
// collective that sums the partial projections. All three must outlive the model.
struct TensorParallelRank {
  const ShardPlan* plan = nullptr;
  const ModelWeights* weights = nullptr;
  Collective* collective = nullptr;
};

class LlamaCpu : public LanguageModel {
 public:
  // `max_batch` cache slots of `max_context` positions each.
  // `checkpoint` and `pool` must outlive the model. With `tp`, the model is one rank of a tensor-parallel
  // group: it holds and attends over its rank's heads (its chain must be built for plan->local), and every
  // rank of the group must run each forward call together.
  LlamaCpu(const Checkpoint& checkpoint, std::unique_ptr<BackendChain> chain, ThreadPool& pool, int max_batch,
           int max_context, const TensorParallelRank* tp = nullptr);

  const ModelConfig& config() const override { return config_; }
  int max_batch() const override { return cache_.slots(); }
  int max_context() const override { return cache_.max_context(); }
  const float* forward(const std::vector<SequenceChunk>& chunks) override;
  std::string attention_backend() const override { return chain_->active_name(); }
  std::vector<std::string> attention_backends_used() const override { return chain_->served_by(); }

 private:
  // out = W x for every product of the group, all sharing the input x [tokens][cols]; int8 matrices get x
  // quantized once for the whole group.
  void linear(std::initializer_list<cpu::Product> group, const float* x, int tokens);
  void grow_buffers(int tokens, int chunks);
  // Sums a partial projection (tokens x dim) over the tensor-parallel group; nothing without one.
  void all_reduce(float* x, int tokens);

  ModelConfig config_;
  ModelConfig local_;  // the attention side this model holds: config_, or its rank's share under tp
  const ModelWeights& w_;
  TensorParallelRank tp_;
  std::unique_ptr<BackendChain> chain_;
  ThreadPool& pool_;
  KvCache cache_;
  std::vector<float> rope_table_;  // [position][head_dim/2][cos, sin]

  // Run state, sized for the largest batch seen (no allocation on the per-token path after warm-up).
  std::vector<float> x_;                              // (tokens, dim) residual stream
  std::vector<float> xb_;                             // (tokens, dim) normed input / attention output
  std::vector<float> xb2_;                            // (tokens, dim) projection output
  std::vector<float> q_;                              // (tokens, local dim)
  std::vector<float> k_;                              // (tokens, local kv_dim)
  std::vector<float> v_;                              // (tokens, local kv_dim)
  std::vector<float> hb_;                             // (tokens, local hidden_dim)
  std::vector<float> hb2_;                            // (tokens, local hidden_dim)
  std::vector<float> logits_;                         // (chunks, vocab)
  std::vector<float> last_;                           // (chunks, dim) final-normed last token of each chunk
  std::vector<int> pos_, slot_;                       // per token
  std::vector<int32_t> q_start_, kv_len_, seq_slot_;  // per chunk, for the attention call
  cpu::QuantizedActivations xq_;                      // the int8 copy of the current matrix input
};

}  // namespace llm
