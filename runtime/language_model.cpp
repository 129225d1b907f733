#include "language_model.h"

#include <cmath>

#include "error.h"
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

double rope_frequency(const ModelConfig& config, int i) {
  double freq = std::pow(static_cast<double>(config.rope_theta), -2.0 * i / config.head_dim());
  if (!config.rope_freq_factors.empty()) freq /= config.rope_freq_factors[static_cast<size_t>(i)];
  const ModelConfig::RopeScaling& s = config.rope_scaling;
  if (s.factor <= 0.0f) return freq;
  // Llama 3.1's rule (HF _compute_llama3_parameters): wavelengths longer than the original context over
  // low_freq_factor are stretched by `factor`, shorter than over high_freq_factor kept, blended between.
  const double wavelen = 2.0 * M_PI / freq;
  const double low_wavelen = s.original_max_position / static_cast<double>(s.low_freq_factor);
  const double high_wavelen = s.original_max_position / static_cast<double>(s.high_freq_factor);
  if (wavelen < high_wavelen) return freq;
  if (wavelen > low_wavelen) return freq / s.factor;
  const double smooth = (s.original_max_position / wavelen - s.low_freq_factor) /
                        (static_cast<double>(s.high_freq_factor) - s.low_freq_factor);
  return (1.0 - smooth) * freq / s.factor + smooth * freq;
}

std::vector<float> rope_table(const ModelConfig& config, int max_context) {
  const int half = config.head_dim() / 2;
  std::vector<float> table(static_cast<size_t>(max_context) * half * 2);
  for (int pos = 0; pos < max_context; ++pos)
    for (int i = 0; i < half; ++i) {
      const double freq = rope_frequency(config, i);
      table[(static_cast<size_t>(pos) * half + i) * 2] = static_cast<float>(std::cos(pos * freq));
      table[(static_cast<size_t>(pos) * half + i) * 2 + 1] = static_cast<float>(std::sin(pos * freq));
    }
  return table;
}

int check_chunks(const std::vector<SequenceChunk>& chunks, const ModelConfig& config, int slots, int max_context) {
  int tokens = 0;
  for (const auto& ch : chunks) {
    const int n = static_cast<int>(ch.tokens.size());
    if (n == 0 || ch.slot < 0 || ch.slot >= slots || ch.start_pos < 0 || ch.start_pos + n > max_context)
      fail("forward: chunk (slot {}, start {}, {} tokens) does not fit {} slots of {} positions", ch.slot, ch.start_pos,
           n, slots, max_context);
    for (int token : ch.tokens)
      if (token < 0 || token >= config.vocab_size)
        fail("forward: token id {} is outside the vocabulary [0, {})", token, config.vocab_size);
    tokens += n;
  }
  return tokens;
}

void LanguageModel::forward_argmax(const std::vector<SequenceChunk>& chunks, int* ids) {
  const float* logits = forward(chunks);
  const int vocab = config().vocab_size;
  for (size_t i = 0; i < chunks.size(); ++i) ids[i] = argmax(logits + i * vocab, vocab);
}

void LanguageModel::forward_argmax_steps(const std::vector<SequenceChunk>& chunks, int steps, int* ids) {
  check_steps(chunks, steps, max_context());
  std::vector<SequenceChunk> batch = chunks;
  const size_t n = chunks.size();
  for (int s = 0; s < steps; ++s) {
    forward_argmax(batch, ids + s * n);
    for (size_t k = 0; k < n; ++k) batch[k] = SequenceChunk{batch[k].slot, batch[k].start_pos + 1, {ids[s * n + k]}};
  }
}

void LanguageModel::forward_sample(const std::vector<SequenceChunk>& chunks, const SamplingParams& params,
                                   const float* uniforms, int* ids) {
  const float* logits = forward(chunks);
  const int vocab = config().vocab_size;
  for (size_t k = 0; k < chunks.size(); ++k)
    ids[k] = Sampler::pick(logits + k * static_cast<size_t>(vocab), vocab, params, uniforms[k], pick_scratch_);
}

void check_steps(const std::vector<SequenceChunk>& chunks, int steps, int max_context) {
  if (steps < 1) fail("forward_argmax_steps: {} steps; at least 1", steps);
  for (const SequenceChunk& ch : chunks) {
    if (ch.tokens.size() != 1)
      fail("forward_argmax_steps: the chunk of slot {} has {} tokens; decode steps take one", ch.slot,
           ch.tokens.size());
    if (ch.start_pos + steps > max_context)
      fail("forward_argmax_steps: {} steps from position {} (slot {}) run past the context of {} positions", steps,
           ch.start_pos, ch.slot, max_context);
  }
}

}  // namespace llm
