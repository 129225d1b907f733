#include "generator.h"

#include <algorithm>
#include <chrono>

#include "error.h"
#include "sampler.h"

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

size_t GenerationResult::decode_steps() const {
  const size_t sampled = tokens.size() + (stop == StopReason::EndOfText ? 1 : 0);
  return sampled > 0 ? sampled - 1 : 0;  // the first token came from the prefill
}

double GenerationResult::decode_tokens_per_second() const {
  return decode_seconds > 0 ? decode_steps() / decode_seconds : 0.0;
}

std::vector<GenerationResult> generate_batch(LanguageModel& model, const Tokenizer& tokenizer,
                                             const std::vector<std::string>& prompts, const GenerationOptions& options,
                                             const std::function<void(size_t, const std::string&)>& on_text) {
  using clock = std::chrono::steady_clock;
  const size_t n = prompts.size();
  const int context = model.max_context();
  if (n == 0) return {};
  if (n > static_cast<size_t>(model.max_batch()))
    fail("{} prompts but the model was set up for batches of {}", n, model.max_batch());

  std::vector<GenerationResult> results(n);
  std::vector<SequenceChunk> chunks;
  for (size_t i = 0; i < n; ++i) {
    GenerationResult& r = results[i];
    r.prompt_tokens = tokenizer.encode(prompts[i], options.add_bos);
    const int len = static_cast<int>(r.prompt_tokens.size());
    if (len == 0) fail("prompt {} is empty and add_bos is off: there is nothing to continue from", i + 1);
    if (len >= context)
      fail("{} is {} tokens but the model's context holds {} (and at least one new token)",
           n == 1 ? std::string("the prompt") : fmt::format("prompt {}", i + 1), len, context);
    chunks.push_back(SequenceChunk{static_cast<int>(i), 0, r.prompt_tokens});
  }
  std::vector<Sampler> samplers;
  for (size_t i = 0; i < n; ++i) {
    SamplingParams p = options.sampling;
    p.seed += i;
    samplers.emplace_back(p);
  }
  std::vector<Utf8StreamDecoder> utf8(n);
  auto emit = [&](size_t i, const std::string& text) {
    if (text.empty()) return;
    results[i].text += text;
    if (on_text) on_text(i, text);
  };
  // One forward pass over `chunks`; next[k] is chunk k's next token. Greedy steps ask the model for the
  // argmax only (a GPU model then copies back one id per sequence, not the logits).
  // Sampling steps draw each sequence's uniform from its own Sampler and let the model pick (a GPU model
  // on the device, then copying back one id per sequence).
  std::vector<int> next(n);
  std::vector<float> uniforms(n);
  auto step = [&](const std::vector<SequenceChunk>& batch) {
    if (options.sampling.temperature <= 0.0f) {
      model.forward_argmax(batch, next.data());
      return;
    }
    for (size_t k = 0; k < batch.size(); ++k) uniforms[k] = samplers[batch[k].slot].next_uniform();
    model.forward_sample(batch, options.sampling, uniforms.data(), next.data());
  };

  // Prefill: every prompt in one forward pass.
  auto start = clock::now();
  step(chunks);
  const double prefill = std::chrono::duration<double>(clock::now() - start).count();

  // Decode: each live sequence takes its sampled token, then all step together.
  std::vector<int> token(next.begin(), next.begin() + n), prev(n), pos(n);
  std::vector<bool> live(n, true);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = results[i].prompt_tokens.back();
    pos[i] = static_cast<int>(results[i].prompt_tokens.size());
    results[i].stop = StopReason::MaxTokens;
  }
  // Sequence i takes sampled token t: it ends (EOS or a listed stop token, max_tokens, a full context) or
  // t becomes its input at pos[i] (returns true).
  auto take = [&](size_t i, int t) -> bool {
    GenerationResult& r = results[i];
    const bool listed =
        std::find(options.stop_tokens.begin(), options.stop_tokens.end(), t) != options.stop_tokens.end();
    if (options.stop_at_eos && (t == tokenizer.eos_id() || t == tokenizer.bos_id() || listed)) {
      r.stop = StopReason::EndOfText;  // BOS in llama2.c models starts a new document: the text ends
      live[i] = false;
      return false;
    }
    r.tokens.push_back(t);
    emit(i, utf8[i].push(tokenizer.decode_piece(prev[i], t)));
    if (static_cast<int>(r.tokens.size()) >= options.max_tokens) {
      live[i] = false;
      return false;
    }
    if (pos[i] >= context) {
      r.stop = StopReason::ContextFull;
      live[i] = false;
      return false;
    }
    prev[i] = t;
    return true;
  };
  const bool greedy = options.sampling.temperature <= 0.0f;
  const int ahead = std::max(1, options.steps_ahead > 0 ? options.steps_ahead : model.greedy_steps_ahead());
  std::vector<int> run;  // a forward_argmax_steps call's picks, [step][chunk]
  start = clock::now();
  for (;;) {
    chunks.clear();
    for (size_t i = 0; i < n; ++i)
      if (live[i] && take(i, token[i])) chunks.push_back(SequenceChunk{static_cast<int>(i), pos[i]++, {token[i]}});
    if (chunks.empty()) break;
    // Greedy: several steps in one call where every sequence has room for them (tokens and context).
    int steps = greedy ? ahead : 1;
    for (const SequenceChunk& ch : chunks)
      steps = std::min(
          {steps, options.max_tokens - static_cast<int>(results[ch.slot].tokens.size()), context - ch.start_pos});
    if (steps <= 1) {
      step(chunks);
      for (size_t k = 0; k < chunks.size(); ++k) token[chunks[k].slot] = next[k];
      continue;
    }
    const size_t m = chunks.size();
    run.resize(static_cast<size_t>(steps) * m);
    model.forward_argmax_steps(chunks, steps, run.data());
    for (size_t k = 0; k < m; ++k) {
      const size_t i = static_cast<size_t>(chunks[k].slot);
      // Picks 0 .. steps - 2 were the inputs of the steps after them; the last is the next input.
      bool going = true;
      for (int s = 0; going && s + 1 < steps; ++s)
        if ((going = take(i, run[s * m + k]))) ++pos[i];
      if (going) token[i] = run[(steps - 1) * m + k];
    }
  }
  const double decode = std::chrono::duration<double>(clock::now() - start).count();
  for (size_t i = 0; i < n; ++i) {
    emit(i, utf8[i].flush());
    results[i].prefill_seconds = prefill;
    results[i].decode_seconds = decode;
    results[i].backends = model.attention_backends_used();
  }
  return results;
}

GenerationResult generate(LanguageModel& model, const Tokenizer& tokenizer, const std::string& prompt,
                          const GenerationOptions& options, const std::function<void(const std::string&)>& on_text) {
  auto results = generate_batch(model, tokenizer, {prompt}, options, [&](size_t, const std::string& text) {
    if (on_text) on_text(text);
  });
  return std::move(results.front());
}

}  // namespace llm
