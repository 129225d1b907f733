#include "sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

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
