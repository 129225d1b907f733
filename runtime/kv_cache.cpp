#include "kv_cache.h"

namespace llm {

KvCache::KvCache(const ModelConfig& config, int slots, int max_context)
    : kv_dim_(config.kv_dim()),
      head_dim_(config.head_dim()),
      slots_(slots),
      max_context_(max_context),
      k_(static_cast<std::size_t>(config.n_layers) * slots * max_context * config.kv_dim()),
      v_(k_.size()) {}

llm_kv_cache_view KvCache::view(int layer) const {
  llm_kv_cache_view v{};
  v.struct_size = sizeof(v);
  v.layout = LLM_KV_LAYOUT_CONTIGUOUS;
  v.dtype = LLM_DTYPE_F32;
  v.device_kind = LLM_DEVICE_CPU;
  const std::size_t layer_offset = static_cast<std::size_t>(layer) * slots_ * max_context_ * kv_dim_;
  v.k = k_.data() + layer_offset;
  v.v = v_.data() + layer_offset;
  v.seq_stride = static_cast<int64_t>(max_context_) * kv_dim_;
  v.token_stride = kv_dim_;
  v.head_stride = head_dim_;
  return v;
}

}  // namespace llm
