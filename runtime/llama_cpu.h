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

namespace llm {

class LlamaCpu : public LanguageModel {
 public:
  // `max_batch` cache slots of `max_context` positions each.
  // `checkpoint` and `pool` must outlive the model.
  LlamaCpu(const Checkpoint& checkpoint, std::unique_ptr<BackendChain> chain, ThreadPool& pool, int max_batch,
           int max_context);

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

  ModelConfig config_;
  const ModelWeights& w_;
  std::unique_ptr<BackendChain> chain_;
  ThreadPool& pool_;
  KvCache cache_;
  std::vector<float> rope_table_;  // [position][head_dim/2][cos, sin]

  // Run state, sized for the largest batch seen (no allocation on the per-token path after warm-up).
  std::vector<float> x_;                              // (tokens, dim) residual stream
  std::vector<float> xb_;                             // (tokens, dim) normed input / attention output
  std::vector<float> xb2_;                            // (tokens, dim) projection output
  std::vector<float> q_;                              // (tokens, dim)
  std::vector<float> k_;                              // (tokens, kv_dim)
  std::vector<float> v_;                              // (tokens, kv_dim)
  std::vector<float> hb_;                             // (tokens, hidden_dim)
  std::vector<float> hb2_;                            // (tokens, hidden_dim)
  std::vector<float> logits_;                         // (chunks, vocab)
  std::vector<float> last_;                           // (chunks, dim) final-normed last token of each chunk
  std::vector<int> pos_, slot_;                       // per token
  std::vector<int32_t> q_start_, kv_len_, seq_slot_;  // per chunk, for the attention call
  cpu::QuantizedActivations xq_;                      // the int8 copy of the current matrix input
};

}  // namespace llm
