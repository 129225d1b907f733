#include "generator.h"

#include <chrono>

#include "error.h"

namespace llm {

const char* stop_reason_name(StopReason reason) {
  switch (reason) {
    case StopReason::EndOfText: return "end of text";
    case StopReason::MaxTokens: return "max tokens";
    case StopReason::ContextFull: return "context full";
  }
  return "?";
}

double GenerationResult::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? prompt_tokens.size() / prefill_seconds : 0.0;
}

double GenerationResult::decode_tokens_per_second() const {
  const size_t steps = tokens.size() + (stop == StopReason::EndOfText ? 1 : 0);  // the stop token was decoded too
  return decode_seconds > 0 && steps > 1 ? (steps - 1) / decode_seconds : 0.0;
}

GenerationResult generate(LanguageModel& model, const Tokenizer& tokenizer, const std::string& prompt,
                          const GenerationOptions& options, const std::function<void(const std::string&)>& on_text) {
  using clock = std::chrono::steady_clock;
  const int context = model.max_context();
  GenerationResult r;
  r.prompt_tokens = tokenizer.encode(prompt, options.add_bos);
  const int n_prompt = static_cast<int>(r.prompt_tokens.size());
  if (n_prompt == 0) fail("the prompt is empty and add_bos is off: there is nothing to continue from");
  if (n_prompt >= context)
    fail("the prompt is {} tokens but the model's context holds {} (and at least one new token)", n_prompt, context);

  Sampler sampler(options.sampling);
  Utf8StreamDecoder utf8;
  auto emit = [&](const std::string& bytes) {
    std::string text = utf8.push(bytes);
    if (text.empty()) return;
    r.text += text;
    if (on_text) on_text(text);
  };

  // Prefill: the whole prompt in one forward pass.
  auto start = clock::now();
  const float* logits = model.forward({SequenceChunk{0, 0, r.prompt_tokens}});
  int token = sampler.sample(logits, model.config().vocab_size);
  r.prefill_seconds = std::chrono::duration<double>(clock::now() - start).count();

  // Decode: one token at a time until EOS (or BOS, which starts a new document), max_tokens or the
  // context limit.
  int prev = r.prompt_tokens.back();
  int pos = n_prompt;
  start = clock::now();
  r.stop = StopReason::MaxTokens;
  while (true) {
    if (options.stop_at_eos && (token == tokenizer.eos_id() || token == tokenizer.bos_id())) {
      r.stop = StopReason::EndOfText;
      break;
    }
    r.tokens.push_back(token);
    emit(tokenizer.decode_piece(prev, token));
    if (static_cast<int>(r.tokens.size()) >= options.max_tokens) break;
    if (pos >= context) {
      r.stop = StopReason::ContextFull;
      break;
    }
    prev = token;
    logits = model.forward({SequenceChunk{0, pos++, {token}}});
    token = sampler.sample(logits, model.config().vocab_size);
  }
  r.decode_seconds = std::chrono::duration<double>(clock::now() - start).count();
  if (std::string rest = utf8.flush(); !rest.empty()) {
    r.text += rest;
    if (on_text) on_text(rest);
  }
  r.backends = model.attention_backends_used();
  return r;
}

}  // namespace llm
