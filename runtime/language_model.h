// What the generation loop needs from a model, whatever device it runs on.
#pragma once

#include <llm/attention_backend.h>

#include <string>
#include <utility>
#include <vector>

#include "model_config.h"
#include "sampler.h"

namespace llm {

// New tokens for one sequence: appended to cache slot `slot` at positions start_pos, start_pos+1, ...
struct SequenceChunk {
  int slot = 0;
  int start_pos = 0;
  std::vector<int> tokens;
};

// One attention call over packed queries and outputs, [token][head][head_dim] (the layout both models use):
// sizes, causal mask, 1/sqrt(head_dim) scale and strides filled; the caller sets the pointers (q, out,
// q_start, kv_len, seq_slot, kv, stream) and the layer.
llm_attention_args packed_attention_args(const ModelConfig& config, int tokens, int sequences, int max_q_len,
                                         int max_kv_len, llm_dtype dtype);

// The rotation frequency of pair i: theta^(-2i/head_dim), adjusted by the config's RoPE scaling.
double rope_frequency(const ModelConfig& config, int i);

// cos/sin of pos * rope_frequency(i) for every position below max_context and pair i, as
// [position][head_dim/2][cos, sin]: computed in double and rounded once, so every model rotates alike.
std::vector<float> rope_table(const ModelConfig& config, int max_context);

// Checks that every chunk fits `slots` cache slots of `max_context` positions and that its tokens are in
// the vocabulary; throws llm::Error naming the chunk or the token otherwise. Returns the total token count.
int check_chunks(const std::vector<SequenceChunk>& chunks, const ModelConfig& config, int slots, int max_context);

// Checks forward_argmax_steps' arguments: at least one step, one token a chunk, every step's position
// inside the context. Throws llm::Error naming the chunk otherwise.
void check_steps(const std::vector<SequenceChunk>& chunks, int steps, int max_context);

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;
  virtual const ModelConfig& config() const = 0;
  // Number of sequences that can be in flight at once (cache slots).
  virtual int max_batch() const = 0;
  // Positions one sequence can hold (the model's limit or a smaller configured one).
  virtual int max_context() const = 0;
  // Runs all chunks as one batch; returns the logits of each chunk's last token, [chunks][vocab],
  // valid until the next call. A prompt is one chunk of many tokens; a decode step, chunks of one.
  virtual const float* forward(const std::vector<SequenceChunk>& chunks) = 0;
  // The same pass, returning only each chunk's greedy next token in ids[chunks] (a GPU model computes
  // the argmax on the device and copies back just the ids).
  virtual void forward_argmax(const std::vector<SequenceChunk>& chunks, int* ids);
  // `steps` greedy decode steps from `chunks` (one token each): every step after the first takes as its
  // tokens the ids the step before picked, at the next positions. ids[s * chunks.size() + k] is chunk k's
  // pick at step s. The default runs forward_argmax step by step; a GPU model runs the steps back to back
  // on the device, without the host between them. Throws llm::Error (naming the chunk) where the steps
  // would run past the context.
  virtual void forward_argmax_steps(const std::vector<SequenceChunk>& chunks, int steps, int* ids);
  // The same pass, returning in ids[k] the token Sampler::pick chooses from chunk k's logits with `params`
  // and the uniform uniforms[k] (a sampling generator draws them from each sequence's own Sampler, so the
  // text is what Sampler::sample would give). The default copies the logits out and picks on the host; a
  // GPU model picks on the device and copies back just the ids.
  virtual void forward_sample(const std::vector<SequenceChunk>& chunks, const SamplingParams& params,
                              const float* uniforms, int* ids);
  // How many greedy steps a forward_argmax_steps call should take when the generation allows (1: the model
  // gains nothing from more).
  virtual int greedy_steps_ahead() const { return 1; }
  // The attention backend serving calls now, and every one that served so far.
  virtual std::string attention_backend() const = 0;
  virtual std::vector<std::string> attention_backends_used() const = 0;

 private:
  std::vector<std::pair<float, int>> pick_scratch_;  // forward_sample's candidates, reused step to step
};

}  // namespace llm
