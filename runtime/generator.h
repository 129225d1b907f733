// The generation loop: prefill the prompt as one batch, then decode token by token, streaming text.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "language_model.h"
#include "sampler.h"
#include "tokenizer.h"

namespace llm {

enum class StopReason { EndOfText, MaxTokens, ContextFull };
const char* stop_reason_name(StopReason reason);

struct GenerationOptions {
  int max_tokens = 256;  // new tokens at most
  bool add_bos = true;
  bool stop_at_eos = true;       // false: run to max_tokens (for reference comparisons)
  std::vector<int> stop_tokens;  // ids that end the text besides the tokenizer's EOS (a model's own list)
  SamplingParams sampling;
  // Greedy decode steps per model call (LanguageModel::forward_argmax_steps; fewer where a sequence's
  // max_tokens or the context ends sooner): 0 takes the model's greedy_steps_ahead(). Text is the same
  // either way; a sequence that stops inside a run leaves the run's later steps unused.
  int steps_ahead = 0;
};

struct GenerationResult {
  std::vector<int> prompt_tokens;
  std::vector<int> tokens;  // generated ids (the stop token excluded)
  std::string text;         // generated text (the prompt excluded)
  StopReason stop = StopReason::MaxTokens;
  double prefill_seconds = 0;         // prompt forward pass, up to the first sampled token
  double decode_seconds = 0;          // every later step
  std::vector<std::string> backends;  // attention backends that served, in order

  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;  // decode_steps() over decode_seconds
  // Forward passes after the prefill (the stop token, when one ended the text, was decoded too).
  size_t decode_steps() const;
};

// Generates a continuation of `prompt` in cache slot 0. `on_text` receives complete UTF-8 text as it
// is produced. Throws llm::Error when the prompt does not fit the context.
GenerationResult generate(LanguageModel& model, const Tokenizer& tokenizer, const std::string& prompt,
                          const GenerationOptions& options,
                          const std::function<void(const std::string&)>& on_text = {});

// Generates continuations of several prompts together: prompt i in cache slot i, all prompts prefilled in
// one batch, then one decode step for every live sequence at a time; each stops on its own (EOS, its
// max_tokens, the context). Results are in prompt order; on_text(i, text) streams sequence i's text.
// Sampling uses seed + i for sequence i. Throws llm::Error when a prompt does not fit or there are more
// prompts than the model's batch.
std::vector<GenerationResult> generate_batch(LanguageModel& model, const Tokenizer& tokenizer,
                                             const std::vector<std::string>& prompts, const GenerationOptions& options,
                                             const std::function<void(size_t, const std::string&)>& on_text = {});

}  // namespace llm
