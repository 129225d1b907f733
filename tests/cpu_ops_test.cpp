// The forward pass's CPU kernels against float64 references, and the property that makes prefill and
// decode agree: a token's product is bitwise the same alone or in a batch, on 1 or 2 threads.
#include "cpu_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace llm::cpu {
namespace {

struct Rand {
  std::mt19937 rng{std::random_device{}()};
  std::vector<float> vec(size_t n) {
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
  }
};

double rel_error(const std::vector<float>& got, const std::vector<double>& ref) {
  double e = 0, r = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    e += (got[i] - ref[i]) * (got[i] - ref[i]);
    r += ref[i] * ref[i];
  }
  return std::sqrt(e / r);
}

TEST(CpuOps, MatmulMatchesFloat64AndIsBitwiseStableAcrossBatchAndThreads) {
  Rand r;
  for (auto [rows, cols, tokens] : {std::tuple{7, 13, 1}, {64, 64, 5}, {33, 172, 9}, {288, 288, 4}, {130, 768, 3}}) {
    auto w = r.vec(static_cast<size_t>(rows) * cols), x = r.vec(static_cast<size_t>(tokens) * cols);
    Matrix m;
    m.rows = rows, m.cols = cols, m.f32 = w.data();
    std::vector<float> batched(static_cast<size_t>(tokens) * rows, std::nanf(""));
    ThreadPool two(2), one(1);
    matmul(m, x.data(), tokens, batched.data(), two);
    std::vector<double> ref(batched.size());
    for (int t = 0; t < tokens; ++t)
      for (int i = 0; i < rows; ++i) {
        double s = 0;
        for (int k = 0; k < cols; ++k) s += static_cast<double>(w[i * cols + k]) * x[t * cols + k];
        ref[t * rows + i] = s;
      }
    EXPECT_LT(rel_error(batched, ref), 1e-6) << rows << "x" << cols << " tokens " << tokens;
    for (int t = 0; t < tokens; ++t) {  // one token at a time, one thread: identical bits
      std::vector<float> single(rows);
      matmul(m, x.data() + t * cols, 1, single.data(), one);
      for (int i = 0; i < rows; ++i) ASSERT_EQ(single[i], batched[t * rows + i]) << "token " << t << " row " << i;
    }
  }
}

TEST(CpuOps, Q8MatmulMatchesDequantizedReference) {
  Rand r;
  for (auto [rows, cols, tokens] : {std::tuple{5, 32, 1}, {64, 64, 3}, {288, 768, 2}, {33, 288, 5}}) {
    auto wf = r.vec(static_cast<size_t>(rows) * cols), x = r.vec(static_cast<size_t>(tokens) * cols);
    QuantizedActivations wq;  // quantize the weights with the same routine the file format uses
    quantize_rows(wf.data(), rows, cols, 32, wq);
    Matrix m;
    m.type = WeightType::Q8_0, m.rows = rows, m.cols = cols, m.q = wq.q.data(), m.scales = wq.scales.data();
    m.group_size = 32;
    QuantizedActivations xq;
    quantize_rows(x.data(), tokens, cols, 32, xq);
    std::vector<float> out(static_cast<size_t>(tokens) * rows, std::nanf(""));
    ThreadPool two(2), one(1);
    matmul_q8(m, xq, out.data(), two);
    // exact reference: the same integer products in double
    std::vector<double> ref(out.size()), real(out.size());
    for (int t = 0; t < tokens; ++t)
      for (int i = 0; i < rows; ++i) {
        double s = 0, s_real = 0;
        for (int k = 0; k < cols; ++k) {
          s += double(wq.q[i * cols + k]) * wq.scales[(i * cols + k) / 32] * xq.q[t * cols + k] *
               xq.scales[(t * cols + k) / 32];
          s_real += double(wf[i * cols + k]) * x[t * cols + k];
        }
        ref[t * rows + i] = s;
        real[t * rows + i] = s_real;
      }
    EXPECT_LT(rel_error(out, ref), 1e-6) << "the int8 kernel itself";
    // Both operands rounded to 8 bits per group of 32: on random data the dot products' relative error is
    // 1-2% (measured up to 0.0214 once), so the bound is 4e-2. The kernel's own exactness is checked above.
    EXPECT_LT(rel_error(out, real), 4e-2) << "Q8_0 x Q8_0 against the unquantized product";
    for (int t = 0; t < tokens; ++t) {
      QuantizedActivations one_token;
      quantize_rows(x.data() + t * cols, 1, cols, 32, one_token);
      std::vector<float> single(rows);
      matmul_q8(m, one_token, single.data(), one);
      for (int i = 0; i < rows; ++i) ASSERT_EQ(single[i], out[t * rows + i]);
    }
  }
}

TEST(CpuOps, GroupedProductsEqualTheSameProductsOneByOne) {
  Rand r;
  ThreadPool pool(2);
  for (int tokens : {1, 2, 7}) {
    // three fp32 matrices of different heights over one input, then two int8 ones
    auto wa = r.vec(64 * 96), wb = r.vec(32 * 96), wc = r.vec(5 * 96), x = r.vec(tokens * 96);
    Matrix a, b, c;
    a.rows = 64, b.rows = 32, c.rows = 5;
    a.cols = b.cols = c.cols = 96;
    a.f32 = wa.data(), b.f32 = wb.data(), c.f32 = wc.data();
    std::vector<float> ga(tokens * 64, std::nanf("")), gb(tokens * 32, std::nanf("")), gc(tokens * 5, std::nanf(""));
    const Product group[] = {{&a, ga.data()}, {&b, gb.data()}, {&c, gc.data()}};
    matmul_group(group, 3, x.data(), nullptr, tokens, pool);
    for (auto [m, got] : {std::pair{&a, &ga}, {&b, &gb}, {&c, &gc}}) {
      std::vector<float> alone(got->size());
      matmul(*m, x.data(), tokens, alone.data(), pool);
      ASSERT_EQ(alone, *got) << "fp32 tokens " << tokens;
    }
    QuantizedActivations qa, qb, xq;
    quantize_rows(wa.data(), 64, 96, 32, qa);
    quantize_rows(wb.data(), 32, 96, 32, qb);
    quantize_rows(x.data(), tokens, 96, 32, xq);
    Matrix ma, mb;
    ma.type = mb.type = WeightType::Q8_0;
    ma.rows = 64, mb.rows = 32, ma.cols = mb.cols = 96, ma.group_size = mb.group_size = 32;
    ma.q = qa.q.data(), ma.scales = qa.scales.data(), mb.q = qb.q.data(), mb.scales = qb.scales.data();
    const Product qgroup[] = {{&ma, ga.data()}, {&mb, gb.data()}};
    matmul_group(qgroup, 2, x.data(), &xq, tokens, pool);
    for (auto [m, got] : {std::pair{&ma, &ga}, {&mb, &gb}}) {
      std::vector<float> alone(static_cast<size_t>(tokens) * m->rows);
      matmul_q8(*m, xq, alone.data(), pool);
      ASSERT_EQ(alone, std::vector<float>(got->begin(), got->begin() + alone.size())) << "q8 tokens " << tokens;
    }
  }
}

TEST(CpuOps, RmsnormRopeSwiglu) {
  Rand r;
  auto x = r.vec(64), g = r.vec(64);
  std::vector<float> out(64);
  rmsnorm(out.data(), x.data(), g.data(), 64, 1e-5f);
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const double inv = 1.0 / std::sqrt(ss / 64 + 1e-5);
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(out[i], g[i] * x[i] * inv, 1e-5);

  // RoPE by angle a on pair (x0, x1) is a rotation: norms are kept, a quarter turn maps (1, 0) to (0, 1)
  std::vector<float> v = {1, 0, 3, 4}, table = {0, 1, std::cos(0.5f), std::sin(0.5f)};
  rope(v.data(), 1, 4, table.data());
  EXPECT_NEAR(v[0], 0, 1e-7);
  EXPECT_NEAR(v[1], 1, 1e-7);
  EXPECT_NEAR(std::hypot(v[2], v[3]), 5, 1e-5);
  EXPECT_NEAR(std::atan2(v[3], v[2]) - std::atan2(4.0, 3.0), 0.5, 1e-5);

  std::vector<float> gate = {-2, 0, 3}, up = {1, 5, 2};
  swiglu(gate.data(), up.data(), 3);
  EXPECT_NEAR(gate[0], -2 / (1 + std::exp(2.0)), 1e-6);
  EXPECT_EQ(gate[1], 0);
  EXPECT_NEAR(gate[2], 3 / (1 + std::exp(-3.0)) * 2, 1e-5);
}

}  // namespace
}  // namespace llm::cpu
