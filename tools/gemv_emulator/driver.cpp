// Runs the emulated tensor-core GEMV kernel over shapes, tokens and splits against a float64 reference
// (see run.sh); prints one line a run and the failure count, exits non-zero on a failure.
#include <cuda_runtime.h>

#include <random>
#include <string>

#include "gemv.h"  // first: the CUDA headers define the qualifiers emu_core.h replaces
// The order matters: the stand-ins, then the kernel's headers (this directory's mma.cuh and pdl.cuh
// before runtime/cuda's), then the kernel, cut out of gemv_tc.cu by run.sh.
// clang-format off
#include "emu_core.h"
#include "dtype_convert.cuh"
#include "mma.cuh"
#include "pdl.cuh"
#include "emu_kernel.h"
// clang-format on

using namespace llm;
using namespace llm::cuda;

template <typename T>
uint16_t bits_of(float v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(v)).x;
  else
    return static_cast<__half_raw>(__float2half_rn(v)).x;
}
template <typename T>
double val_of(uint16_t b) {
  return emu::elem<T>(b, 0);
}

struct Shape {
  GemvEpilogue e;
  int rows[3];
  int cols;
  int head_dim;
};
constexpr int kSlots = 3, kPos = 24, kGuard = 37;

template <typename T, int MT, int NT, GemvEpilogue E>
void run_kernel(const GemvArgs& p, int full, int blocks, int warps) {
  const size_t shared = size_t(warps - 1) * MT * NT * 4 * 32;
  emu::launch(blocks, warps * 32, shared, [&] { gemv_tc_kernel<T, MT, NT, E>(p, full); });
}

template <typename T, int MT, int NT>
void dispatch(GemvEpilogue e, const GemvArgs& p, int full, int blocks, int warps) {
  switch (e) {
    case GemvEpilogue::QkvRope: return run_kernel<T, MT, NT, GemvEpilogue::QkvRope>(p, full, blocks, warps);
    case GemvEpilogue::AddF32: return run_kernel<T, MT, NT, GemvEpilogue::AddF32>(p, full, blocks, warps);
    case GemvEpilogue::StoreF32: return run_kernel<T, MT, NT, GemvEpilogue::StoreF32>(p, full, blocks, warps);
    case GemvEpilogue::Swiglu: return run_kernel<T, 2, NT, GemvEpilogue::Swiglu>(p, full, blocks, warps);
  }
}

static int failures = 0;

// prepared: the RMSNorm prepared by the add before (gemv.h's norm_parts, next_x): a product other than AddF32
// reads 5 partial sums of squares a token and scales its totals; an AddF32 writes next_x and its partial sums.
template <typename T>
void check(const Shape& s, int tokens, int warps, int row_tiles, std::mt19937& rng, bool misalign_x = false,
           bool prepared = false) {
  std::uniform_real_distribution<float> u(-1, 1);
  const int nm = s.e == GemvEpilogue::QkvRope ? 3 : s.e == GemvEpilogue::Swiglu ? 2 : 1;
  std::vector<std::vector<uint16_t>> w(nm);
  std::vector<std::vector<double>> wd(nm);
  for (int m = 0; m < nm; ++m) {
    const int rows = s.e == GemvEpilogue::Swiglu ? s.rows[0] : s.rows[m];
    w[m].resize(size_t(rows) * s.cols);
    for (auto& b : w[m]) b = bits_of<T>(u(rng)), wd[m].push_back(val_of<T>(b));
  }
  std::vector<uint16_t> xstore(size_t(tokens) * s.cols + 8);
  uint16_t* x = xstore.data() + (misalign_x ? 1 : 0);
  std::vector<double> xd(size_t(tokens) * s.cols);
  for (size_t i = 0; i < xd.size(); ++i) x[i] = bits_of<T>(u(rng)), xd[i] = val_of<T>(x[i]);
  std::vector<int32_t> pos(tokens), slot(tokens);
  for (int t = 0; t < tokens; ++t) pos[t] = 3 + t % 5 + 5 * (t / 15), slot[t] = t % kSlots;
  std::vector<float> cs;
  for (int p = 0; p < kPos; ++p)
    for (int i = 0; i < std::max(1, s.head_dim / 2); ++i) {
      const double a = p * std::pow(10000.0, -2.0 * i / std::max(1, s.head_dim));
      cs.push_back(std::cos(a)), cs.push_back(std::sin(a));
    }
  const int rows0 = s.rows[0];
  const bool f32 = s.e == GemvEpilogue::AddF32 || s.e == GemvEpilogue::StoreF32;
  std::vector<float> outf(size_t(tokens) * rows0 + kGuard, NAN), y0(size_t(tokens) * rows0);
  std::vector<uint16_t> outh(size_t(tokens) * rows0 + kGuard, 0xffff);
  for (auto& v : y0) v = 4 * u(rng);
  if (s.e == GemvEpilogue::AddF32) std::copy(y0.begin(), y0.end(), outf.begin());
  std::vector<uint16_t> kc(size_t(kSlots) * kPos * s.rows[1] + kGuard, 0xffff), vc(kc.size(), 0xffff);

  emu::g_ranges.clear();
  for (auto& m : w) emu::g_ranges.push_back({(const char*)m.data(), m.size() * 2});
  emu::g_ranges.push_back({(const char*)x, xd.size() * 2, true});
  GemvArgs p;
  for (int m = 0; m < nm; ++m) p.w[m] = w[m].data();
  p.rows[0] = s.rows[0], p.rows[1] = s.rows[1], p.rows[2] = s.rows[2];
  p.cols = s.cols, p.x = x, p.tokens = tokens;
  p.out = f32 ? (void*)outf.data() : (void*)outh.data();
  p.head_dim = s.head_dim, p.cos_sin = cs.data(), p.pos = pos.data(), p.slot = slot.data();
  p.k_cache = kc.data(), p.v_cache = vc.data(), p.seq_stride = int64_t(kPos) * s.rows[1];
  // the prepared norm: each token's scale (consumer), or the gain, next_x and partial sums (producer)
  constexpr int kParts = 5;
  constexpr float kEps = 1e-5f;
  std::vector<double> scale(tokens, 1.0);
  std::vector<float> parts_in(size_t(tokens) * kParts), gain(rows0);
  const bool reads_norm = prepared && s.e != GemvEpilogue::AddF32, writes_norm = prepared && !reads_norm;
  if (reads_norm) {
    for (int t = 0; t < tokens; ++t) {
      double sum = 0;
      for (int k = 0; k < kParts; ++k) {
        const float v = u(rng);
        sum += parts_in[size_t(t) * kParts + k] = 0.1f + v * v * s.cols;
      }
      scale[t] = 1.0 / std::sqrt(float(sum) / s.cols + kEps);
    }
    p.norm_parts = parts_in.data(), p.norm_parts_count = kParts, p.norm_eps = kEps;
  }
  for (auto& g : gain) g = 1.0f + 0.5f * u(rng);

  // host plan, as gemv_tc.cu
  const int nt = tokens > 8 ? 2 : 1;
  const int rt = s.e == GemvEpilogue::Swiglu ? 1 : row_tiles;
  int blocks;
  if (s.e == GemvEpilogue::Swiglu)
    blocks = (s.rows[0] + 15) / 16;
  else {
    const int rows = s.e == GemvEpilogue::QkvRope ? s.rows[0] + s.rows[1] + s.rows[2] : s.rows[0];
    blocks = ((rows + 15) / 16 + rt - 1) / rt;
  }
  bool aligned = s.cols % 8 == 0 && uintptr_t(p.x) % 16 == 0;
  for (const void* q : p.w) aligned = aligned && uintptr_t(q) % 16 == 0;
  const int full = aligned ? s.cols / 32 : 0;
  std::vector<uint16_t> next_x(size_t(tokens) * rows0 + kGuard, 0xffff);
  std::vector<float> next_parts(size_t(tokens) * blocks + kGuard, NAN);
  if (writes_norm) p.next_gain = gain.data(), p.next_x = next_x.data(), p.next_parts = next_parts.data();
  emu::g_oob = emu::g_misaligned = emu::g_reads_before_wait = emu::g_nc_activation = 0;
  if (nt == 1) {
    if (rt == 1)
      dispatch<T, 1, 1>(s.e, p, full, blocks, warps);
    else
      dispatch<T, 2, 1>(s.e, p, full, blocks, warps);
  } else {
    if (rt == 1)
      dispatch<T, 1, 2>(s.e, p, full, blocks, warps);
    else
      dispatch<T, 2, 2>(s.e, p, full, blocks, warps);
  }

  auto dot = [&](int m, int r, int t) {
    double a = 0;
    for (int k = 0; k < s.cols; ++k) a += wd[m][size_t(r) * s.cols + k] * xd[size_t(t) * s.cols + k];
    return a * scale[t];
  };
  double e2 = 0, n2 = 0;
  bool bad = false;
  auto cmp = [&](double got, double want) {
    if (!std::isfinite(got)) bad = true;
    e2 += (got - want) * (got - want);
    n2 += want * want;
  };
  std::vector<char> kw(kc.size(), 0), vw(kc.size(), 0);
  for (int t = 0; t < tokens; ++t) {
    if (s.e == GemvEpilogue::StoreF32 || s.e == GemvEpilogue::AddF32)
      for (int r = 0; r < rows0; ++r)
        cmp(outf[size_t(t) * rows0 + r], (s.e == GemvEpilogue::AddF32 ? y0[size_t(t) * rows0 + r] : 0) + dot(0, r, t));
    else if (s.e == GemvEpilogue::Swiglu)
      for (int r = 0; r < rows0; ++r) {
        const double g = dot(0, r, t);
        cmp(val_of<T>(outh[size_t(t) * rows0 + r]), g / (1 + std::exp(-g)) * dot(1, r, t));
      }
    else {
      for (int sec = 0; sec < 3; ++sec) {
        const int n = s.rows[sec];
        for (int r = 0; r < n; r += 2) {
          double a = dot(sec, r, t), b = dot(sec, r + 1, t);
          if (sec < 2) {
            const float* c = &cs[size_t(pos[t]) * s.head_dim + r % s.head_dim];
            const double ra = a * c[0] - b * c[1], rb = a * c[1] + b * c[0];
            a = ra, b = rb;
          }
          if (sec == 0) {
            cmp(val_of<T>(outh[size_t(t) * rows0 + r]), a);
            cmp(val_of<T>(outh[size_t(t) * rows0 + r + 1]), b);
          } else {
            auto& cache = sec == 1 ? kc : vc;
            auto& wr = sec == 1 ? kw : vw;
            const size_t i = (size_t(slot[t]) * kPos + pos[t]) * s.rows[1] + r;
            cmp(val_of<T>(cache[i]), a);
            cmp(val_of<T>(cache[i + 1]), b);
            wr[i] = wr[i + 1] = 1;
          }
        }
      }
    }
  }
  bool guard_ok = true;
  if (writes_norm) {  // next_x = gain * y (the y written), each token's partial sums: the sum of squares of y
    for (int t = 0; t < tokens; ++t) {
      double ss = 0, parts = 0;
      for (int r = 0; r < rows0; ++r) {
        const double y = outf[size_t(t) * rows0 + r];
        ss += y * y;
        cmp(val_of<T>(next_x[size_t(t) * rows0 + r]), gain[r] * y);
      }
      for (int b = 0; b < blocks; ++b) parts += next_parts[size_t(t) * blocks + b];
      if (!(std::abs(parts - ss) <= 1e-5 * ss)) bad = true;
    }
    for (size_t i = size_t(tokens) * rows0; i < next_x.size(); ++i) guard_ok &= next_x[i] == 0xffff;
    for (size_t i = size_t(tokens) * blocks; i < next_parts.size(); ++i) guard_ok &= std::isnan(next_parts[i]);
  }
  if (f32) {
    for (size_t i = size_t(tokens) * rows0; i < outf.size(); ++i) guard_ok &= std::isnan(outf[i]);
  } else
    for (size_t i = size_t(tokens) * rows0; i < outh.size(); ++i) guard_ok &= outh[i] == 0xffff;
  if (s.e == GemvEpilogue::QkvRope)
    for (size_t i = 0; i < kc.size(); ++i) guard_ok &= (kw[i] || kc[i] == 0xffff) && (vw[i] || vc[i] == 0xffff);
  const double err = std::sqrt(e2 / n2);
  const double bound = std::is_same_v<T, __nv_bfloat16> ? 1e-2 : 1e-3;
  const bool ok = !bad && err < bound && guard_ok && emu::g_oob == 0 && emu::g_misaligned == 0 &&
                  emu::g_reads_before_wait == 0 && emu::g_nc_activation == 0;
  if (!ok) ++failures;
  std::printf("%s %s e=%d rows %d+%d+%d cols %d tokens %2d warps %2d rt %d%s%s: err %.2e %s%s%s%s%s\n",
              ok ? "ok  " : "FAIL", std::is_same_v<T, __nv_bfloat16> ? "bf16" : "fp16", int(s.e), s.rows[0], s.rows[1],
              s.rows[2], s.cols, tokens, warps, rt, misalign_x ? " x misaligned" : "",
              prepared ? (writes_norm ? " preparing the norm" : " prepared norm") : "", err,
              bad ? "nonfinite or partial sums off " : "", guard_ok ? "" : "guard/cache written ",
              emu::g_oob ? "OOB " : "", emu::g_reads_before_wait ? "x read before wait " : "",
              emu::g_nc_activation ? "x read with __ldg" : "");
}

int main(int argc, char** argv) {
  std::mt19937 rng(1);
  using E = GemvEpilogue;
  std::vector<Shape> shapes = {
      {E::StoreF32, {18, 0, 0}, 40, 0}, {E::StoreF32, {37, 0, 0}, 33, 0},  {E::AddF32, {40, 0, 0}, 200, 0},
      {E::AddF32, {18, 0, 0}, 36, 0},   {E::StoreF32, {33, 0, 0}, 256, 0}, {E::Swiglu, {18, 0, 0}, 40, 0},
      {E::Swiglu, {21, 0, 0}, 36, 0},   {E::Swiglu, {40, 0, 0}, 264, 0},   {E::QkvRope, {18, 6, 6}, 40, 6},
      {E::QkvRope, {24, 8, 8}, 200, 8}, {E::QkvRope, {12, 4, 4}, 36, 4},   {E::QkvRope, {32, 16, 16}, 264, 8},
  };
  for (const Shape& s : shapes)
    for (int tokens : {1, 3, 8, 9, 16})
      for (int warps : {1, 2, 4, 16})
        for (int rt : {1, 2}) {
          if (s.e == E::Swiglu && rt == 2) continue;
          check<__nv_bfloat16>(s, tokens, warps, rt, rng);
          check<__half>(s, tokens, warps, rt, rng);
          check<__nv_bfloat16>(s, tokens, warps, rt, rng, false, true);
          check<__half>(s, tokens, warps, rt, rng, false, true);
        }
  // stories260K's products (dim 64, 8 heads of 8, 4 kv heads, hidden 172, vocab 512), every token count
  const std::vector<Shape> model = {
      {E::QkvRope, {64, 32, 32}, 64, 8}, {E::AddF32, {64, 0, 0}, 64, 0},    {E::Swiglu, {172, 0, 0}, 64, 0},
      {E::AddF32, {64, 0, 0}, 172, 0},   {E::StoreF32, {512, 0, 0}, 64, 0},
  };
  for (const Shape& s : model)
    for (int tokens = 1; tokens <= 16; ++tokens)
      for (int warps : {1, 2})
        for (int rt : {1, 2}) {
          if (s.e == E::Swiglu && rt == 2) continue;
          check<__nv_bfloat16>(s, tokens, warps, rt, rng);
          check<__half>(s, tokens, warps, rt, rng);
        }
  check<__nv_bfloat16>({E::StoreF32, {18, 0, 0}, 256, 0}, 5, 2, 1, rng, true);
  std::printf("%d failures\n", failures);
  return failures != 0;
}
