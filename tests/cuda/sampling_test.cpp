// sample_rows (sampling.h): the sampling pick on the GPU against Sampler::pick on the host with the same
// uniforms: vocabularies of 7 to 100,003, peaked to flat logits, temperatures, top-k and top-p alone and
// together (k = 1, k past the vocabulary), several rows a call; picks poisoned first. The device's exp and
// sums differ from the host's in the last bits, so a pick may differ (rarely) where the host's walk passes
// within 1e-5 of a boundary, or between candidates whose probabilities are equal to within 1e-6 (their
// order can swap): such a pick must lie, in the walk's order, between the host's picks for a uniform and a
// top_p moved by up to 1e-5 either way (a move of 1e-5 can pass over several small candidates of a large
// vocabulary, so the picks at the ends alone are not enough), or be as likely as the host's to 1e-6.
#include "sampling.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "cuda_test_support.h"
#include "sampler.h"

namespace llm {
namespace {

struct DeviceSampler {
  int rows, vocab;
  void* memory = nullptr;
  float *logits = nullptr, *uniforms = nullptr;
  int32_t* ids = nullptr;
  cuda::SamplingWorkspace ws;

  DeviceSampler(int rows_, int vocab_) : rows(rows_), vocab(vocab_) {
    EXPECT_EQ(cudaMalloc(&memory, cuda::SamplingWorkspace::bytes(rows, vocab)), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&logits, sizeof(float) * rows * vocab), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&uniforms, sizeof(float) * rows), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&ids, sizeof(int32_t) * rows), cudaSuccess);
    ws.carve(memory, rows, vocab, nullptr);
  }
  ~DeviceSampler() { cudaFree(memory), cudaFree(logits), cudaFree(uniforms), cudaFree(ids); }
  std::vector<int> pick(const std::vector<float>& host_logits, int n, const SamplingParams& p,
                        const std::vector<float>& us) {
    EXPECT_EQ(cudaMemcpy(logits, host_logits.data(), sizeof(float) * n * vocab, cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(uniforms, us.data(), sizeof(float) * n, cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemset(ids, 0x5a, sizeof(int32_t) * rows), cudaSuccess);  // poisoned
    cuda::sample_rows(logits, n, vocab, p, uniforms, ws, ids, nullptr);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<int> out(n);
    EXPECT_EQ(cudaMemcpy(out.data(), ids, sizeof(int32_t) * n, cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }
};

TEST(Sampling, GpuPicksWhatTheHostSamplerPicks) {
  LLM_REQUIRE_GPU();
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  constexpr int kRows = 3;
  int draws = 0, near_boundary = 0;
  for (int vocab : {7, 512, 32000, 100003}) {
    DeviceSampler dev(kRows, vocab);
    std::vector<std::pair<float, int>> scratch;
    for (float spread : {8.0f, 2.0f, 0.3f, 0.01f}) {
      std::normal_distribution<float> d(0.0f, spread);
      const std::vector<SamplingParams> grid = {
          {1.0f, 0, 1.0f, 0},         {0.7f, 40, 1.0f, 0},   {1.3f, 0, 0.9f, 0},
          {0.8f, 1000, 0.95f, 0},     {1.0f, 1, 1.0f, 0},    {0.8f, 0, 0.5f, 0},
          {1.0f, vocab + 5, 1.0f, 0}, {0.9f, 20, 0.999f, 0}, {0.5f, vocab, 0.7f, 0},
      };
      for (const SamplingParams& p : grid)
        for (int call = 0; call < 4; ++call) {
          std::vector<float> logits(static_cast<size_t>(kRows) * vocab), us(kRows);
          for (float& v : logits) v = d(rng);
          for (float& u : us) u = uniform(rng);
          const std::vector<int> got = dev.pick(logits, kRows, p, us);
          for (int r = 0; r < kRows; ++r) {
            const float* row = logits.data() + static_cast<size_t>(r) * vocab;
            const int want = Sampler::pick(row, vocab, p, us[r], scratch);
            ++draws;
            if (got[r] == want) continue;
            // a boundary within 1e-5: the host's pick for a nearby uniform or top_p
            std::set<int> nearby;
            for (float du : {-1e-5f, 0.0f, 1e-5f})
              for (float dp : {-1e-5f, 0.0f, 1e-5f}) {
                SamplingParams q = p;
                q.top_p = p.top_p < 1.0f ? p.top_p + dp : p.top_p;
                nearby.insert(Sampler::pick(row, vocab, q, std::min(0.9999999f, std::max(0.0f, us[r] + du)), scratch));
              }
            ++near_boundary;
            const float mx = *std::max_element(row, row + vocab);
            auto prob = [&](int id) { return std::exp((row[id] - mx) / p.temperature); };
            const bool valid = got[r] >= 0 && got[r] < vocab;
            const bool as_likely = valid && std::fabs(prob(got[r]) - prob(want)) <= 1e-6f * prob(want);
            // The walk's order: ids in order, or where top-k or top-p cut, by probability (ids in order
            // among equals), as the host sorts them.
            std::vector<int> at(vocab);
            for (int i = 0; i < vocab; ++i) at[i] = i;
            if (cuts_tail(p, vocab)) {
              std::vector<std::pair<float, int>> order(vocab);
              for (int i = 0; i < vocab; ++i) order[i] = {-prob(i), i};
              std::sort(order.begin(), order.end());
              for (int i = 0; i < vocab; ++i) at[order[i].second] = i;
            }
            int lo = vocab, hi = -1;
            for (int id : nearby) lo = std::min(lo, at[id]), hi = std::max(hi, at[id]);
            const bool between = valid && at[got[r]] >= lo && at[got[r]] <= hi;
            EXPECT_TRUE(between || as_likely)
                << "vocab " << vocab << " spread " << spread << " T " << p.temperature << " top_k " << p.top_k
                << " top_p " << p.top_p << " u " << us[r] << ": GPU " << got[r] << " (in the walk's order "
                << (valid ? at[got[r]] : -1) << "), host " << want << " (" << at[want]
                << "); the host's within 1e-5: " << lo << " to " << hi;
          }
        }
    }
  }
  std::printf("%d picks against the host's: %d differ, each at a boundary or between near-equal candidates\n", draws,
              near_boundary);
  EXPECT_LE(near_boundary, draws / 100);
}

TEST(Sampling, RowsWithoutANumberGiveNoId) {
  LLM_REQUIRE_GPU();
  constexpr int kVocab = 1000;
  DeviceSampler dev(3, kVocab);
  std::vector<float> logits(3 * kVocab, -INFINITY);
  for (int i = 0; i < kVocab; ++i) logits[i] = std::nanf("");  // row 0: NaN throughout
  logits[kVocab + 17] = INFINITY;                              // row 1: an infinite logit
  logits[2 * kVocab + 444] = 3.0f;                             // row 2: one finite logit among -inf
  for (const SamplingParams& p : {SamplingParams{1.0f, 0, 1.0f, 0}, SamplingParams{0.8f, 40, 0.9f, 0}}) {
    const std::vector<int> got = dev.pick(logits, 3, p, {0.5f, 0.5f, 0.99f});
    EXPECT_EQ(got[0], -1);
    EXPECT_EQ(got[1], -1);
    EXPECT_EQ(got[2], 444);
  }
}

}  // namespace
}  // namespace llm
