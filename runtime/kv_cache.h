// The KV cache, owned by the runtime and read by every attention backend through the SDK's view.
// Host memory, fp32, contiguous layout: [layer][slot][position][kv_head][head_dim].
#pragma once

#include <llm/attention_backend.h>

#include <cstddef>
#include <vector>

#include "model_config.h"

namespace llm {

class KvCache {
 public:
  KvCache(const ModelConfig& config, int slots, int max_context);

  // Rows of kv_dim floats for (layer, slot, pos): where the forward pass writes new keys and values.
  float* key(int layer, int slot, int pos) { return k_.data() + offset(layer, slot, pos); }
  float* value(int layer, int slot, int pos) { return v_.data() + offset(layer, slot, pos); }

  // The SDK description of one layer's cache.
  llm_kv_cache_view view(int layer) const;

  int slots() const { return slots_; }
  int max_context() const { return max_context_; }
  std::size_t bytes() const { return (k_.size() + v_.size()) * sizeof(float); }

 private:
  std::size_t offset(int layer, int slot, int pos) const {
    return ((static_cast<std::size_t>(layer) * slots_ + slot) * max_context_ + pos) * kv_dim_;
  }
  int kv_dim_, head_dim_, slots_, max_context_;
  std::vector<float> k_, v_;
};

}  // namespace llm
