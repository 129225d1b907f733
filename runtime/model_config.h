// The model's shape ("the blueprint"): everything the forward pass needs to size its buffers.
#pragma once

#include <cstdint>
#include <vector>

namespace llm {

struct ModelConfig {
  int dim = 0;         // transformer width
  int hidden_dim = 0;  // SwiGLU inner width
  int n_layers = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads (grouped-query attention when < n_heads)
  int vocab_size = 0;
  int max_seq_len = 0;            // context limit
  bool shared_classifier = true;  // classifier weights are the token embedding
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  // Llama 3.1-style RoPE scaling (HF rope_scaling type "llama3"): low frequencies divided by `factor`,
  // high ones kept, a smooth blend between (see rope_table). factor 0: none.
  struct RopeScaling {
    float factor = 0.0f;
    float low_freq_factor = 1.0f, high_freq_factor = 4.0f;
    int original_max_position = 8192;
  } rope_scaling;
  // Per-pair divisors of the RoPE frequencies (GGUF rope_freqs.weight, how llama.cpp stores Llama 3.1's
  // scaling); empty: none.
  std::vector<float> rope_freq_factors;

  int head_dim() const { return dim / n_heads; }
  int kv_dim() const { return n_kv_heads * head_dim(); }
  int kv_group() const { return n_heads / n_kv_heads; }  // query heads per kv head
};

}  // namespace llm
