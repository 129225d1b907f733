// argmax_rows (cuda_kernels.h): the greedy pick on the GPU, against a plain host argmax; and the keys the
// classifier folds the pick into instead (argmax_key.h), which need no GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "argmax_key.h"
#include "cuda_kernels.h"
#include "cuda_test_support.h"

namespace {

int host_argmax(const float* row, int vocab) {  // the lowest index among equals; -1 where nothing is a number
  int best = -1;
  for (int i = 0; i < vocab; ++i)
    if (row[i] > -FLT_MAX && (best < 0 || row[i] > row[best])) best = i;
  return best;
}

std::vector<int> device_argmax(const std::vector<float>& logits, int rows, int vocab, int offset_floats) {
  float* d = nullptr;
  int32_t* ids = nullptr;
  EXPECT_EQ(cudaMalloc(&d, (logits.size() + offset_floats) * sizeof(float)), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&ids, rows * sizeof(int32_t)), cudaSuccess);
  EXPECT_EQ(cudaMemset(ids, 0x5a, rows * sizeof(int32_t)), cudaSuccess);  // poisoned
  EXPECT_EQ(cudaMemcpy(d + offset_floats, logits.data(), logits.size() * sizeof(float), cudaMemcpyHostToDevice),
            cudaSuccess);
  llm::cuda::argmax_rows(d + offset_floats, rows, vocab, ids, nullptr);
  std::vector<int> out(rows);
  EXPECT_EQ(cudaMemcpy(out.data(), ids, rows * sizeof(int32_t), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(d);
  cudaFree(ids);
  return out;
}

}  // namespace

TEST(Argmax, PicksTheFirstLargestOfEveryRowOverVocabSizes) {
  LLM_REQUIRE_GPU();
  std::mt19937 rng(11);
  // 32000 and 32768 fill a round of loads; 512 and 5 leave threads idle; 32001 and 100003 take the
  // unaligned path or several rounds; offset 1 makes rows start off 16 bytes.
  for (int vocab : {5, 512, 32000, 32001, 32768, 100003})
    for (int offset : {0, 1}) {
      const int rows = 3;
      std::vector<float> logits(static_cast<size_t>(rows) * vocab);
      std::uniform_real_distribution<float> u(-8.0f, 8.0f);
      for (float& v : logits) v = u(rng);
      // row 1: the maximum twice, the first of them must win; row 2: rounded so that ties are common
      const int a = vocab / 3, b = vocab - 1;
      logits[static_cast<size_t>(vocab) + a] = logits[static_cast<size_t>(vocab) + b] = 100.0f;
      for (int i = 0; i < vocab; ++i) logits[2 * static_cast<size_t>(vocab) + i] = std::round(logits[i] / 4.0f);
      const std::vector<int> got = device_argmax(logits, rows, vocab, offset);
      for (int r = 0; r < rows; ++r)
        EXPECT_EQ(got[r], host_argmax(logits.data() + static_cast<size_t>(r) * vocab, vocab))
            << "vocab " << vocab << " offset " << offset << " row " << r;
      EXPECT_EQ(got[1], a);
    }
}

TEST(Argmax, ARowWithoutANumberGivesAnIdOutsideTheVocabulary) {
  LLM_REQUIRE_GPU();
  const int vocab = 32000;
  std::vector<float> logits(2 * static_cast<size_t>(vocab), std::nanf(""));
  for (int i = 0; i < vocab; ++i) logits[vocab + i] = i % 2 ? -INFINITY : std::nanf("");
  logits[vocab + 777] = -3.0f;  // the one number of row 1 wins over the NaNs and infinities
  const std::vector<int> got = device_argmax(logits, 2, vocab, 0);
  EXPECT_TRUE(got[0] < 0 || got[0] >= vocab) << got[0];  // LlamaCuda::forward_argmax turns this into an error
  EXPECT_EQ(got[1], 777);
}

// The largest key over a row names the row host_argmax picks, over values with ties, signed zeros, the
// largest and smallest finite floats, subnormals, infinities and NaN; a row without a number above
// -FLT_MAX has only zero keys (kArgmaxNone). No GPU: the keys' order is plain integer order.
TEST(ArgmaxKey, TheLargestKeyIsTheFirstLargestLogit) {
  std::mt19937 rng(12);
  const float specials[] = {0.0f,
                            -0.0f,
                            1.0f,
                            -1.0f,
                            FLT_MAX,
                            -FLT_MAX,
                            FLT_MIN,
                            -FLT_MIN,
                            1e-45f,
                            -1e-45f,
                            INFINITY,
                            -INFINITY,
                            std::nanf(""),
                            -std::nanf(""),
                            3.5f,
                            -3.5f,
                            std::nextafter(-FLT_MAX, 0.0f)};
  constexpr int kSpecials = sizeof(specials) / sizeof(specials[0]);
  std::uniform_int_distribution<int> pick(0, kSpecials - 1), len(1, 40), coin(0, 3);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  int nones = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    std::vector<float> row(len(rng));
    for (float& v : row) v = coin(rng) ? specials[pick(rng)] : std::round(normal(rng));  // rounded: ties
    uint64_t top = 0;
    for (size_t i = 0; i < row.size(); ++i) {
      uint32_t bits;
      std::memcpy(&bits, &row[i], sizeof(bits));
      top = std::max(top, llm::cuda::argmax_key(bits, static_cast<int>(i)));
    }
    const int want = host_argmax(row.data(), static_cast<int>(row.size()));
    EXPECT_EQ(llm::cuda::argmax_key_row(top), want < 0 ? llm::cuda::kArgmaxNone : want) << "trial " << trial;
    nones += want < 0;
  }
  EXPECT_GT(nones, 0);  // rows of NaN, -inf and -FLT_MAX alone came up
  uint32_t minus_zero = 0x80000000u;
  EXPECT_EQ(llm::cuda::argmax_key(minus_zero, 5), llm::cuda::argmax_key(0u, 5));
  EXPECT_EQ(llm::cuda::argmax_key_row(llm::cuda::argmax_key(0x3f800000u, 2147483646)), 2147483646);
}
