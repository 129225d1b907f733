#include "sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <utility>
#include <vector>

namespace llm {
namespace {

TEST(Sampler, GreedyPicksArgmaxAndLowestIdOnTies) {
  Sampler s(SamplingParams{});
  std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(s.sample(logits.data(), 4), 1);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.37f);
  auto draw = [&](uint64_t seed) {
    Sampler s(SamplingParams{1.0f, 0, 1.0f, seed});
    std::vector<int> ids;
    for (int i = 0; i < 50; ++i) ids.push_back(s.sample(logits.data(), 100));
    return ids;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
}

TEST(Sampler, TopKKeepsOnlyTheKMostLikely) {
  std::vector<float> logits = {5, 4, 3, 2, 1, 0};
  Sampler s(SamplingParams{2.0f, 2, 1.0f, 1});
  for (int i = 0; i < 500; ++i) EXPECT_LT(s.sample(logits.data(), 6), 2);
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  // probabilities ~ 0.665, 0.245, 0.09: top_p 0.6 keeps only the first, 0.8 the first two
  std::vector<float> logits = {2, 1, 0};
  Sampler a(SamplingParams{1.0f, 0, 0.6f, 3});
  for (int i = 0; i < 300; ++i) EXPECT_EQ(a.sample(logits.data(), 3), 0);
  Sampler b(SamplingParams{1.0f, 0, 0.8f, 3});
  std::map<int, int> seen;
  for (int i = 0; i < 2000; ++i) seen[b.sample(logits.data(), 3)]++;
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_NEAR(seen[1] / 2000.0, 0.245 / 0.91, 0.04);
}

// The sampler as written plainly: every candidate sorted, the nucleus over the kept ones, the pick walking
// them in order; `u` is the uniform the sampler draws. With top-p alone the nucleus's mass is the id-order
// total of every candidate (as the sampler sums it).
int plain_sample(const std::vector<float>& logits, const SamplingParams& p, float u) {
  const int n = static_cast<int>(logits.size());
  const float mx = *std::max_element(logits.begin(), logits.end());
  std::vector<std::pair<float, int>> c(n);
  double total = 0;
  for (int i = 0; i < n; ++i) total += (c[i] = {std::exp((logits[i] - mx) / p.temperature), i}).first;
  std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  int keep = p.top_k > 0 ? std::min(p.top_k, n) : n;
  double mass = 0;
  for (int i = 0; i < keep; ++i) mass += c[i].first;
  if (p.top_k <= 0 || p.top_k >= n) mass = total;
  double running = 0;
  for (int i = 0; i < keep && p.top_p < 1.0f; ++i)
    if ((running += c[i].first) >= p.top_p * mass) {
      keep = i + 1;
      break;
    }
  double sum = 0;
  for (int i = 0; i < keep; ++i) sum += c[i].first;
  const double r = u * sum;
  running = 0;
  for (int i = 0; i < keep; ++i)
    if (r < (running += c[i].first)) return c[i].second;
  return c[keep - 1].second;
}

// Top-p on a 32K vocabulary sorts only as far as the nucleus reaches: the same picks as sorting all of it,
// for nuclei of a few tokens to most of the vocabulary (peaked to flat logits), with and without top-k.
TEST(Sampler, TopPOnALargeVocabularyPicksAsAWholeSortWould) {
  std::mt19937 rng(5);
  for (float spread : {8.0f, 2.0f, 0.3f, 0.01f}) {
    std::normal_distribution<float> d(0.0f, spread);
    std::vector<float> logits(32000);
    for (float& v : logits) v = d(rng);
    for (auto [k, top_p] : {std::pair{0, 0.9f}, {0, 0.5f}, {0, 0.99f}, {1000, 0.9f}, {40, 0.95f}}) {
      const SamplingParams p{0.8f, k, top_p, 11};
      Sampler s(p), uniforms(p);
      for (int i = 0; i < 40; ++i)
        ASSERT_EQ(s.sample(logits.data(), 32000), plain_sample(logits, p, uniforms.next_uniform()))
            << "spread " << spread << " top_k " << k << " top_p " << top_p << " draw " << i;
    }
  }
}

TEST(Sampler, TemperatureFollowsTheSoftmax) {
  std::vector<float> logits = {0, std::log(3.0f)};  // p = 0.25, 0.75 at T = 1
  Sampler s(SamplingParams{1.0f, 0, 1.0f, 42});
  int ones = 0;
  for (int i = 0; i < 20000; ++i) ones += s.sample(logits.data(), 2);
  EXPECT_NEAR(ones / 20000.0, 0.75, 0.015);
}

TEST(Sampler, UniformStaysInUnitInterval) {
  Sampler s(SamplingParams{1.0f, 0, 1.0f, 0});
  double sum = 0;
  for (int i = 0; i < 100000; ++i) {
    const float u = s.next_uniform();
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.01);
}

}  // namespace
}  // namespace llm
