// Picks the next token from logits: greedy, or temperature with optional top-k and top-p (nucleus),
// reproducible from a seed (our own generator, so the same seed gives the same text everywhere).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace llm {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  int top_k = 0;             // keep the k most likely tokens; 0: all
  float top_p = 1.0f;        // keep the smallest set whose probability reaches p; 1: all
  uint64_t seed = 0;
};

// Whether top-k or top-p cut the tail of an n-token vocabulary: the candidates are then walked most likely
// first (ids in order among equals), else in id order.
inline bool cuts_tail(const SamplingParams& p, int n) { return (p.top_k > 0 && p.top_k < n) || p.top_p < 1.0f; }

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Chooses a token from logits[0..n); `logits` is left unchanged.
  int sample(const float* logits, int n);
  // What sample() picks when the uniform it draws is `u` (sample() draws exactly one when the temperature is
  // above 0, none otherwise): for callers that draw the uniforms themselves and pick elsewhere (on a GPU).
  // `scratch` holds the candidates between calls.
  static int pick(const float* logits, int n, const SamplingParams& params, float u,
                  std::vector<std::pair<float, int>>& scratch);
  // A uniform float in [0, 1) from the sampler's generator (xorshift64*).
  float next_uniform();

 private:
  SamplingParams params_;
  uint64_t state_;
  std::vector<std::pair<float, int>> candidates_;  // (probability, id), reused across calls
};

// Index of the largest value (the lowest index among equals).
int argmax(const float* values, int n);

}  // namespace llm
