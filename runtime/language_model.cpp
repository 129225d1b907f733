#include "language_model.h"

#include <cmath>

#include "sampler.h"

namespace llm {

llm_attention_args packed_attention_args(const ModelConfig& config, int tokens, int sequences, int max_q_len,
                                         int max_kv_len, llm_dtype dtype) {
  llm_attention_args a{};
  a.struct_size = sizeof(a);
  a.num_seqs = sequences;
  a.total_q_tokens = tokens;
  a.max_q_len = max_q_len;
  a.max_kv_len = max_kv_len;
  a.causal = 1;
  a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(config.head_dim()));
  a.dtype = dtype;
  a.q_token_stride = a.out_token_stride = config.dim;
  a.q_head_stride = a.out_head_stride = config.head_dim();
  return a;
}

void LanguageModel::forward_argmax(const std::vector<SequenceChunk>& chunks, int* ids) {
  const float* logits = forward(chunks);
  const int vocab = config().vocab_size;
  for (size_t i = 0; i < chunks.size(); ++i) ids[i] = argmax(logits + i * vocab, vocab);
}

}  // namespace llm
