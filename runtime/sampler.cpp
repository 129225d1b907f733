#include "sampler.h"

#include <algorithm>
#include <cmath>

namespace llm {

int argmax(const float* values, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (values[i] > values[best]) best = i;
  return best;
}

Sampler::Sampler(const SamplingParams& params)
    // splitmix64 of the seed, so nearby seeds give unrelated streams and seed 0 is not a fixed point
    : params_(params), state_([](uint64_t z) {
        z += 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return (z ^ (z >> 31)) | 1;
      }(params.seed)) {}

float Sampler::next_uniform() {
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  return static_cast<float>((state_ * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;  // 24 bits
}

int Sampler::sample(const float* logits, int n) {
  if (params_.temperature <= 0.0f) return argmax(logits, n);
  return pick(logits, n, params_, next_uniform(), candidates_);
}

int Sampler::pick(const float* logits, int n, const SamplingParams& params, float u,
                  std::vector<std::pair<float, int>>& candidates) {
  if (params.temperature <= 0.0f) return argmax(logits, n);

  // softmax(logits / T) over all tokens, sorted most likely first when top-k or top-p cut the tail
  const float max_logit = logits[argmax(logits, n)];
  candidates.resize(n);
  double sum = 0.0;
  for (int i = 0; i < n; ++i) {
    const float p = std::exp((logits[i] - max_logit) / params.temperature);
    candidates[i] = {p, i};
    sum += p;
  }
  int keep = n;
  const bool cut = cuts_tail(params, n);
  if (cut) {
    auto by_prob = [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    keep = params.top_k > 0 ? std::min(params.top_k, n) : n;
    // The smallest prefix of the sorted candidates whose share of `mass` reaches top_p, searched within the
    // first `sorted` (which are in order); false where it lies beyond them.
    auto nucleus = [&](int sorted, double mass) {
      double running = 0.0;
      for (int i = 0; i < sorted; ++i) {
        running += candidates[i].first;
        if (running >= params.top_p * mass) {
          keep = i + 1;
          return true;
        }
      }
      return false;
    };
    if (params.top_p < 1.0f && keep == n) {
      // Top-p alone: sort only as far as the nucleus reaches, a prefix four times longer each round (a whole
      // 32K vocabulary sorted took 2.7 ms a token; the nucleus is usually a few hundred tokens). The mass
      // is `sum`, the id-order total of every candidate.
      for (int sorted = std::min(n, 256);; sorted = std::min(n, sorted * 4)) {
        std::partial_sort(candidates.begin(), candidates.begin() + sorted, candidates.end(), by_prob);
        if (nucleus(sorted, sum) || sorted == n) break;
      }
    } else {
      std::partial_sort(candidates.begin(), candidates.begin() + keep, candidates.end(), by_prob);
      double kept_sum = 0.0;
      for (int i = 0; i < keep; ++i) kept_sum += candidates[i].first;
      if (params.top_p < 1.0f) nucleus(keep, kept_sum);
    }
    sum = 0.0;
    for (int i = 0; i < keep; ++i) sum += candidates[i].first;
  }
  const double r = u * sum;
  double running = 0.0;
  for (int i = 0; i < keep; ++i) {
    running += candidates[i].first;
    if (r < running) return candidates[i].second;
  }
  return candidates[keep - 1].second;  // rounding left r at the very top
}

}  // namespace llm
