// The decode-step matrix-vector kernels (gemv.h), called directly, against a float64 CPU reference: every
// epilogue, bf16 and fp16, 1 to 16 tokens (1 to 4 for the CUDA-core kernel), the tensor-core kernel in its
// automatic plan and in forced splits (1, 4 and 16 warps a block, one and two row tiles: the partial-sum
// reduction, warps without chunks, tiles past the end), on shapes with odd rows (tiles cut short, q/k/v
// sections that straddle tiles) and odd columns (a tail chunk, rows that do not start on 16 bytes, an odd
// count). Inputs are rounded to the dtype first and the reference computes from the rounded values.
// Outputs are poisoned with NaN first and guarded past their end; the KV cache outside the rows the step
// writes must stay poisoned; NaN never passes. The GPU tests skip where no usable GPU is present.
#include "gemv.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "argmax_key.h"
#include "cuda_check.h"
#include "cuda_kernels.h"
#include "cuda_test_support.h"
#include "error.h"

namespace llm {
namespace {

using cuda::GemvArgs;
using cuda::GemvEpilogue;
using cuda::GemvKernel;
using cuda::GemvTuning;

uint16_t to_bits(float v, DType t) {
  if (t == DType::BF16) return static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(v)).x;
  return static_cast<__half_raw>(__float2half_rn(v)).x;
}

double from_bits(uint16_t bits, DType t) {
  if (t == DType::BF16) {
    __nv_bfloat16_raw r;
    r.x = bits;
    return __bfloat162float(__nv_bfloat16(r));
  }
  __half_raw r;
  r.x = bits;
  return __half2float(__half(r));
}

// A device buffer, freed with its owner.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) { LLM_CUDA_CHECK(cudaMalloc(&p_, bytes)); }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return p_; }
  template <typename V>
  void upload(const std::vector<V>& v) {
    LLM_CUDA_CHECK(cudaMemcpy(p_, v.data(), v.size() * sizeof(V), cudaMemcpyHostToDevice));
  }
  void poison() { LLM_CUDA_CHECK(cudaMemset(p_, 0xff, bytes_)); }  // NaN in fp32, fp16 and bf16
  template <typename V>
  std::vector<V> download() const {
    std::vector<V> v(bytes_ / sizeof(V));
    LLM_CUDA_CHECK(cudaMemcpy(v.data(), p_, bytes_, cudaMemcpyDeviceToHost));
    return v;
  }

 private:
  void* p_ = nullptr;
  size_t bytes_;
};

// ||got - want|| / ||want||; infinity when an element of `got` is not finite.
double rel_l2(const std::vector<double>& got, const std::vector<double>& want) {
  double e = 0, n = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    e += (got[i] - want[i]) * (got[i] - want[i]);
    n += want[i] * want[i];
  }
  return n > 0 ? std::sqrt(e / n) : std::sqrt(e);
}

constexpr int kMaxTokens = 16;
constexpr int kGuard = 67;  // elements past every output, which must stay poisoned
constexpr int kSlots = 3, kPositions = 24;

// One product: the epilogue, its matrices' rows (QkvRope: q, k, v; Swiglu: W1 and W3 rows[0] each),
// cols, and (QkvRope) the head dimension.
struct Shape {
  GemvEpilogue epilogue;
  int rows[3];
  int cols;
  int head_dim = 0;
  std::string name() const {
    static const char* names[] = {"qkv_rope", "swiglu", "add_f32", "store_f32", "argmax_f32"};
    std::string s = std::string(names[static_cast<int>(epilogue)]) + " " + std::to_string(rows[0]);
    if (epilogue == GemvEpilogue::QkvRope) s += "+" + std::to_string(rows[1]) + "+" + std::to_string(rows[2]);
    return s + "x" + std::to_string(cols);
  }
};

// x written by the kernel just before the product, as in the model's forward (an RMSNorm, then the
// product that reads its output): a kernel launched with PDL may start before the one ahead of it has
// finished, and must read nothing that kernel writes before wait_for_previous_kernel(). Here x is poisoned
// (NaN), a long RMSNorm runs, then the RMSNorm that writes x (PDL: it starts early and waits for the long
// one), then the product (PDL: it starts as soon as every block of the x RMSNorm has started, so for the
// long one's whole tail): a load of x that the compiler moved above the wait reads NaN, as the
// ld.global.nc (__ldg) loads of x that ptxas had scheduled above griddepcontrol.wait in
// gemv_tc_kernel<T, 2, 1, *> would have.
struct XProducer {
  static constexpr int kLongRows = 1024, kLongDim = 8192, kMaxCols = 256;
  cudaStream_t stream = nullptr;
  DeviceBuffer long_in{size_t{kLongRows} * kLongDim * 4}, long_out{size_t{kLongRows} * kLongDim * 4};
  DeviceBuffer gain{size_t{kLongDim} * 4}, source{size_t{kMaxTokens} * kMaxCols * 4};

  explicit XProducer(std::mt19937& rng) {
    LLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    LLM_CUDA_CHECK(cudaMemset(long_in.get(), 0, size_t{kLongRows} * kLongDim * 4));
    gain.upload(std::vector<float>(kLongDim, 1.0f));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> v(size_t{kMaxTokens} * kMaxCols);
    for (float& f : v) f = u(rng);
    source.upload(v);
  }
  ~XProducer() { cudaStreamDestroy(stream); }
  XProducer(const XProducer&) = delete;
  XProducer& operator=(const XProducer&) = delete;

  // Enqueues on `stream`: x poisoned, the long RMSNorm, x = RMSNorm(source rows) for `tokens` rows.
  void write_x(DeviceBuffer& x, int cols, int tokens, DType type) const {
    if (cols > kMaxCols) fail("XProducer: {} columns; at most {}", cols, kMaxCols);
    LLM_CUDA_CHECK(cudaMemsetAsync(x.get(), 0xff, size_t{kMaxTokens} * cols * dtype_size(type), stream));
    cuda::rmsnorm(static_cast<const float*>(long_in.get()), nullptr, kLongRows, static_cast<const float*>(gain.get()),
                  kLongDim, 1e-5f, long_out.get(), type, stream);
    cuda::rmsnorm(static_cast<const float*>(source.get()), nullptr, tokens, static_cast<const float*>(gain.get()), cols,
                  1e-5f, x.get(), type, stream);
  }
};

// The input of a product's RMSNorm prepared by the residual add before it (GemvArgs::next_x, norm_parts):
// the device's gain * residual and partial sums ([tokens][count]), and the residual itself (the reference
// norms it).
struct PreparedNorm {
  const void* x = nullptr;
  const float* parts = nullptr;
  int count = 0;
  std::vector<float> residual;  // [tokens][cols]
};

// Inputs of one shape in one dtype, on the host (rounded) and the device, and the reference outputs for
// kMaxTokens tokens (fewer tokens: the first rows of each; token t has the same inputs in every count).
// With `norm`, the product takes a fused RMSNorm (GemvArgs::norm_gain): x is an fp32 residual of a few
// units and the reference normalizes it, with a gain of 0.5 to 1.5, in float64.
class Problem {
 public:
  static constexpr float kEps = 1e-5f;

  Problem(const Shape& s, DType type, std::mt19937& rng, bool norm = false) : s_(s), type_(type), norm_(norm) {
    const int n_mats = s.epilogue == GemvEpilogue::QkvRope ? 3 : s.epilogue == GemvEpilogue::Swiglu ? 2 : 1;
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (int m = 0; m < n_mats; ++m) {
      const int rows = s.epilogue == GemvEpilogue::Swiglu ? s.rows[0] : s.rows[m];
      std::vector<uint16_t> bits(static_cast<size_t>(rows) * s.cols);
      w_.emplace_back(bits.size());
      for (size_t i = 0; i < bits.size(); ++i) bits[i] = to_bits(u(rng), type), w_[m][i] = from_bits(bits[i], type);
      dw_.push_back(std::make_unique<DeviceBuffer>(bits.size() * 2));
      dw_.back()->upload(bits);
    }
    if (norm_) {
      residual_.resize(static_cast<size_t>(kMaxTokens) * s.cols);
      for (float& v : residual_) v = 3 * u(rng);
      for (int i = 0; i < s.cols; ++i) gain_.push_back(1.0f + 0.5f * u(rng));
      dx_ = std::make_unique<DeviceBuffer>(residual_.size() * 4);
      dx_->upload(residual_);
      dgain_ = std::make_unique<DeviceBuffer>(gain_.size() * 4);
      dgain_->upload(gain_);
      normalize();
    } else {
      std::vector<uint16_t> xbits(static_cast<size_t>(kMaxTokens) * s.cols);
      x_.resize(xbits.size());
      for (size_t i = 0; i < xbits.size(); ++i) xbits[i] = to_bits(u(rng), type), x_[i] = from_bits(xbits[i], type);
      dx_ = std::make_unique<DeviceBuffer>(xbits.size() * 2);
      dx_->upload(xbits);
    }
    // residual stream (AddF32), positions and slots (distinct (slot, pos) per token), RoPE table
    y0_.resize(static_cast<size_t>(kMaxTokens) * s.rows[0]);
    for (float& v : y0_) v = 4 * u(rng);
    for (int t = 0; t < kMaxTokens; ++t) pos_.push_back(3 + t % 5 + 5 * (t / 15)), slot_.push_back(t % kSlots);
    if (s.head_dim > 0) {
      for (int p = 0; p < kPositions; ++p)
        for (int i = 0; i < s.head_dim / 2; ++i) {
          const double angle = p * std::pow(10000.0, -2.0 * i / s.head_dim);
          cos_sin_.push_back(static_cast<float>(std::cos(angle)));
          cos_sin_.push_back(static_cast<float>(std::sin(angle)));
        }
    }
    reference();
  }

  // Runs the kernel for `tokens` tokens and returns the worst relative L2 error over its outputs
  // (infinity where one is not finite, or where an element outside them was written). With an XProducer,
  // x is not uploaded but written on `stream` just before the product by an RMSNorm that overlaps it
  // (PDL), as in the model (see XProducer); the reference then follows the x it wrote.
  // With a PreparedNorm (norm), the product reads it instead of the residual, and the reference norms its
  // residual.
  double run(int tokens, GemvKernel kernel, const GemvTuning& tuning, const XProducer* producer = nullptr,
             const PreparedNorm* prepared = nullptr) {
    const Shape& s = s_;
    const size_t e = dtype_size(type_);
    GemvArgs a;
    for (size_t m = 0; m < dw_.size(); ++m) a.w[m] = dw_[m]->get();
    a.rows[0] = s.rows[0], a.rows[1] = s.rows[1], a.rows[2] = s.rows[2];
    a.cols = s.cols;
    a.x = dx_->get();
    a.tokens = tokens;
    if (norm_) a.norm_gain = static_cast<const float*>(dgain_->get()), a.norm_eps = kEps;
    if (prepared) {
      if (!norm_ || prepared->residual.size() != static_cast<size_t>(tokens) * s.cols)
        fail("Problem: a prepared norm needs `norm` and a residual of {} tokens", tokens);
      a.x = prepared->x, a.norm_gain = nullptr, a.norm_parts = prepared->parts, a.norm_parts_count = prepared->count;
      if (!std::equal(prepared->residual.begin(), prepared->residual.end(), residual_.begin())) {
        std::copy(prepared->residual.begin(), prepared->residual.end(), residual_.begin());
        normalize();
        reference();
      }
    }
    const size_t out_count = static_cast<size_t>(tokens) * s.rows[0];
    const bool f32_out = s.epilogue == GemvEpilogue::AddF32 || s.epilogue == GemvEpilogue::StoreF32;
    DeviceBuffer out((out_count + kGuard) * (f32_out ? 4 : e));
    out.poison();
    if (s.epilogue == GemvEpilogue::AddF32)
      LLM_CUDA_CHECK(cudaMemcpy(out.get(), y0_.data(), out_count * 4, cudaMemcpyHostToDevice));
    a.out = out.get();
    const size_t cache_count = static_cast<size_t>(kSlots) * kPositions * s.rows[1];
    DeviceBuffer k_cache((cache_count + kGuard) * e), v_cache((cache_count + kGuard) * e);
    DeviceBuffer cos_sin(std::max<size_t>(4, cos_sin_.size() * 4)), pos(kMaxTokens * 4), slot(kMaxTokens * 4);
    if (s.epilogue == GemvEpilogue::QkvRope) {
      k_cache.poison(), v_cache.poison();
      cos_sin.upload(cos_sin_), pos.upload(pos_), slot.upload(slot_);
      a.head_dim = s.head_dim;
      a.cos_sin = static_cast<const float*>(cos_sin.get());
      a.pos = static_cast<const int32_t*>(pos.get());
      a.slot = static_cast<const int32_t*>(slot.get());
      a.k_cache = k_cache.get(), a.v_cache = v_cache.get();
      a.seq_stride = static_cast<int64_t>(kPositions) * s.rows[1];
    }
    cudaStream_t stream = nullptr;
    if (producer) {
      LLM_CUDA_CHECK(cudaDeviceSynchronize());  // the uploads and poisoning above (legacy stream) done
      stream = producer->stream;
      producer->write_x(*dx_, s.cols, tokens, norm_ ? DType::F32 : type_);
    }
    cuda::gemv(s.epilogue, a, type_, stream, kernel, tuning);
    LLM_CUDA_CHECK(cudaDeviceSynchronize());
    if (producer) {  // the reference from the x the RMSNorm wrote (rows past `tokens` stay NaN, unread)
      if (norm_) {
        residual_ = dx_->download<float>();
        normalize();
      } else {
        const auto xbits = dx_->download<uint16_t>();
        for (size_t i = 0; i < xbits.size(); ++i) x_[i] = from_bits(xbits[i], type_);
      }
      reference();
    }

    // The outputs as doubles, the guard checked.
    auto read = [&](const DeviceBuffer& b, size_t count, bool f32, bool& guard_ok) {
      std::vector<double> v;
      if (f32) {
        const auto raw = b.download<uint32_t>();
        for (size_t i = 0; i < count; ++i) {
          float f;
          std::memcpy(&f, &raw[i], 4);
          v.push_back(f);
        }
        for (size_t i = count; i < raw.size(); ++i) guard_ok = guard_ok && raw[i] == 0xffffffffu;
      } else {
        const auto raw = b.download<uint16_t>();
        for (size_t i = 0; i < count; ++i) v.push_back(from_bits(raw[i], type_));
        for (size_t i = count; i < raw.size(); ++i) guard_ok = guard_ok && raw[i] == 0xffffu;
      }
      return v;
    };
    bool untouched = true;
    auto first = [&](const std::vector<double>& ref, size_t count) {
      return std::vector<double>(ref.begin(), ref.begin() + count);
    };
    double err = rel_l2(read(out, out_count, f32_out, untouched), first(ref_out_, out_count));
    if (s.epilogue == GemvEpilogue::QkvRope) {
      // The rows this step wrote, then every other element still poisoned.
      for (int c = 0; c < 2; ++c) {
        const auto raw = (c == 0 ? k_cache : v_cache).download<uint16_t>();
        std::vector<double> got;
        std::vector<bool> written(raw.size(), false);
        for (int t = 0; t < tokens; ++t)
          for (int r = 0; r < s.rows[1]; ++r) {
            const size_t i = (static_cast<size_t>(slot_[t]) * kPositions + pos_[t]) * s.rows[1] + r;
            got.push_back(from_bits(raw[i], type_));
            written[i] = true;
          }
        const auto& ref = c == 0 ? ref_k_ : ref_v_;
        err = std::max(err, rel_l2(got, first(ref, static_cast<size_t>(tokens) * s.rows[1])));
        for (size_t i = 0; i < raw.size(); ++i) untouched = untouched && (written[i] || raw[i] == 0xffffu);
      }
    }
    return untouched ? err : INFINITY;
  }

  // The RMSNorm's gain (norm).
  const std::vector<float>& gain() const { return gain_; }

 private:
  // x_ = the RMSNorm of residual_ with gain_, in float64.
  void normalize() {
    const int cols = s_.cols;
    x_.assign(residual_.size(), 0.0);
    for (int t = 0; t < kMaxTokens; ++t) {
      const float* r = &residual_[static_cast<size_t>(t) * cols];
      double ss = 0;
      for (int i = 0; i < cols; ++i) ss += static_cast<double>(r[i]) * r[i];
      const double inv = 1.0 / std::sqrt(ss / cols + kEps);
      for (int i = 0; i < cols; ++i) x_[static_cast<size_t>(t) * cols + i] = gain_[i] * (r[i] * inv);
    }
  }

  double dot(const std::vector<double>& w, int r, int t) const {
    double acc = 0;
    for (int k = 0; k < s_.cols; ++k)
      acc += w[static_cast<size_t>(r) * s_.cols + k] * x_[static_cast<size_t>(t) * s_.cols + k];
    return acc;
  }

  void reference() {
    const Shape& s = s_;
    const int rows = s.rows[0];
    ref_out_.assign(static_cast<size_t>(kMaxTokens) * rows, 0.0);
    for (int t = 0; t < kMaxTokens; ++t) {
      double* out = &ref_out_[static_cast<size_t>(t) * rows];
      switch (s.epilogue) {
        case GemvEpilogue::StoreF32:
        case GemvEpilogue::ArgmaxF32:
          for (int r = 0; r < rows; ++r) out[r] = dot(w_[0], r, t);
          break;
        case GemvEpilogue::AddF32:
          for (int r = 0; r < rows; ++r) out[r] = y0_[static_cast<size_t>(t) * rows + r] + dot(w_[0], r, t);
          break;
        case GemvEpilogue::Swiglu:
          for (int r = 0; r < rows; ++r) {
            const double g = dot(w_[0], r, t);
            out[r] = g / (1.0 + std::exp(-g)) * dot(w_[1], r, t);
          }
          break;
        case GemvEpilogue::QkvRope: {
          auto rotate = [&](const std::vector<double>& w, int n, double* dst) {
            for (int r = 0; r < n; r += 2) {
              const double a = dot(w, r, t), b = dot(w, r + 1, t);
              const float* cs = &cos_sin_[static_cast<size_t>(pos_[t]) * s.head_dim + r % s.head_dim];
              dst[r] = a * cs[0] - b * cs[1];
              dst[r + 1] = a * cs[1] + b * cs[0];
            }
          };
          rotate(w_[0], rows, out);
          ref_k_.resize(static_cast<size_t>(kMaxTokens) * s.rows[1]);
          ref_v_.resize(ref_k_.size());
          rotate(w_[1], s.rows[1], &ref_k_[static_cast<size_t>(t) * s.rows[1]]);
          for (int r = 0; r < s.rows[2]; ++r) ref_v_[static_cast<size_t>(t) * s.rows[1] + r] = dot(w_[2], r, t);
          break;
        }
      }
    }
  }

  Shape s_;
  DType type_;
  bool norm_;
  std::vector<float> residual_, gain_;
  std::unique_ptr<DeviceBuffer> dgain_;
  std::vector<std::vector<double>> w_;
  std::vector<std::unique_ptr<DeviceBuffer>> dw_;
  std::vector<double> x_;
  std::unique_ptr<DeviceBuffer> dx_;
  std::vector<float> y0_, cos_sin_;
  std::vector<int32_t> pos_, slot_;
  std::vector<double> ref_out_, ref_k_, ref_v_;
};

std::vector<Shape> shapes() {
  using E = GemvEpilogue;
  return {
      // rows 18 and 1000 (tiles cut short), cols 40 (a chunk and a tail), 4104 (128 chunks and a tail),
      // 200, 36 (rows 8-byte aligned: element by element), 33 (odd)
      {E::StoreF32, {18, 0, 0}, 40},
      {E::StoreF32, {1000, 0, 0}, 4104},
      {E::StoreF32, {37, 0, 0}, 33},
      {E::AddF32, {1000, 0, 0}, 200},
      {E::AddF32, {18, 0, 0}, 36},
      {E::AddF32, {64, 0, 0}, 4096},
      {E::Swiglu, {18, 0, 0}, 40},
      {E::Swiglu, {1000, 0, 0}, 200},
      {E::Swiglu, {37, 0, 0}, 4104},
      {E::Swiglu, {21, 0, 0}, 36},
      // rows of 96, 256 and 704 chunks: at one token a lane's chunks are one batch of three, one of eight
      // and two of eleven; with more tokens (four a batch) a partial batch, whole batches, and whole
      // batches then a partial one
      {E::StoreF32, {40, 0, 0}, 768},
      {E::Swiglu, {24, 0, 0}, 2048},
      {E::AddF32, {20, 0, 0}, 5632},
      // MobileLLM's widths, rows of 120, 144, 200, 320 and 544 chunks: one ragged batch (lanes 24-31 load
      // three chunks of four), then whole batches and a tail of single chunks
      {E::AddF32, {30, 0, 0}, 960},
      {E::QkvRope, {18, 6, 6}, 1152, 6},
      {E::Swiglu, {20, 0, 0}, 1600},
      {E::AddF32, {24, 0, 0}, 2560},
      {E::StoreF32, {22, 0, 0}, 4352},
      // q, k, v sections that do not end on a 16-row tile: pairs near the seams
      {E::QkvRope, {18, 6, 6}, 40, 6},
      {E::QkvRope, {24, 8, 8}, 200, 8},
      {E::QkvRope, {1024, 256, 256}, 4104, 64},
      {E::QkvRope, {12, 4, 4}, 36, 4},
      {E::QkvRope, {64, 64, 64}, 33, 16},
  };
}

// Every shape in bf16 and fp16 through `kernel`, for every token count it takes and every tuning; with
// `norm`, every shape but the residual add, through a fused RMSNorm.
void check_kernel(GemvKernel kernel, const std::vector<GemvTuning>& tunings, bool norm = false) {
  std::mt19937 rng(20240611);
  for (DType type : {DType::BF16, DType::F16}) {
    const double bound = type == DType::BF16 ? 1e-2 : 1e-3;
    for (const Shape& s : shapes()) {
      if (norm && s.epilogue == GemvEpilogue::AddF32) continue;
      Problem problem(s, type, rng, norm);
      double worst = 0;
      for (int tokens = 1; tokens <= cuda::gemv_max_tokens(kernel, type); ++tokens)
        for (const GemvTuning& tuning : tunings) {
          const double err = problem.run(tokens, kernel, tuning);
          worst = std::max(worst, std::isnan(err) ? INFINITY : err);
          EXPECT_LT(err, bound) << dtype_name(type) << " " << s.name() << " tokens " << tokens << " warps "
                                << tuning.warps << " row tiles " << tuning.row_tiles << " splits " << tuning.splits;
        }
      std::printf("%s %-28s%s worst relative L2 error %.3e (bound %.0e)\n", dtype_name(type), s.name().c_str(),
                  norm ? " RMSNorm fused:" : "", worst, bound);
    }
  }
}

TEST(Gemv, TensorCoreKernelMatchesAFloat64Reference) {
  LLM_REQUIRE_GPU();
  check_kernel(GemvKernel::TensorCore, {GemvTuning{}, GemvTuning{1, 1}, GemvTuning{4, 2}, GemvTuning{16, 1},
                                        GemvTuning{16, 2}, GemvTuning{2, 1}});
}

// stories260K's products (dim 64, 8 heads of 8 and 4 kv heads, hidden 172: rows of 172 columns that do
// not start on 16 bytes, vocab 512), each reading an x that an RMSNorm writes just before it under PDL
// (XProducer), every token count, both kernels: the model's decode steps in miniature. The
// tensor-core kernel read x before the RMSNorm had written it at 1 to 8 tokens (SwiGLU, and every epilogue
// with two row tiles): garbage logits at batch 8, wrong prefills of up to 8 tokens.
TEST(Gemv, ReadsXOnlyOnceTheKernelBeforeHasWrittenIt) {
  LLM_REQUIRE_GPU();
  using E = GemvEpilogue;
  std::mt19937 rng(20240612);
  const XProducer producer(rng);
  const std::vector<Shape> model = {
      {E::QkvRope, {64, 32, 32}, 64, 8}, {E::AddF32, {64, 0, 0}, 64},    {E::Swiglu, {172, 0, 0}, 64},
      {E::AddF32, {64, 0, 0}, 172},      {E::StoreF32, {512, 0, 0}, 64},
  };
  for (DType type : {DType::BF16, DType::F16}) {
    const double bound = type == DType::BF16 ? 1e-2 : 1e-3;
    for (const Shape& s : model) {
      Problem problem(s, type, rng);
      double worst = 0;
      for (GemvKernel kernel : {GemvKernel::TensorCore, GemvKernel::CudaCore})
        for (int tokens = 1; tokens <= cuda::gemv_max_tokens(kernel, type); ++tokens)
          for (const GemvTuning& tuning : {GemvTuning{}, GemvTuning{1, 2}, GemvTuning{2, 1}}) {
            if (kernel == GemvKernel::CudaCore && tuning.warps) continue;
            for (int round = 0; round < 3; ++round) {
              const double err = problem.run(tokens, kernel, tuning, &producer);
              worst = std::max(worst, std::isnan(err) ? INFINITY : err);
              EXPECT_LT(err, bound) << dtype_name(type) << " " << s.name() << " " << cuda::gemv_kernel_name(kernel)
                                    << " tokens " << tokens << " warps " << tuning.warps << " row tiles "
                                    << tuning.row_tiles << " round " << round;
            }
          }
      std::printf("%s %-28s x from a PDL RMSNorm: worst relative L2 error %.3e (bound %.0e)\n", dtype_name(type),
                  s.name().c_str(), worst, bound);
    }
  }
}

// Every split of the rows among warps: the rows of 4096-5632 columns take 2, 4 and 8 (slices of uneven
// chunk counts at 4104 columns), the others fall back to whole rows; the plan's own choice first.
std::vector<GemvTuning> cuda_core_splits() {
  std::vector<GemvTuning> t(5);
  for (int i = 1; i < 5; ++i) t[i].splits = 1 << (i - 1);
  return t;
}

TEST(Gemv, CudaCoreKernelMatchesAFloat64Reference) {
  LLM_REQUIRE_GPU();
  check_kernel(GemvKernel::CudaCore, cuda_core_splits());
}

// The RMSNorm fused into the CUDA-core products (the model's batch-1 step): q/k/v, SwiGLU and the
// classifier read the fp32 residual; tails, odd columns and 1 to 4 tokens as above. Its sum of squares
// is split with the rows.
TEST(Gemv, CudaCoreKernelFusesTheRmsNormBeforeIt) {
  LLM_REQUIRE_GPU();
  check_kernel(GemvKernel::CudaCore, cuda_core_splits(), true);
}

// The RMSNorm prepared by the residual add before the product (the model's decode step): an AddF32 writes
// y = y0 + W x, next_x = gain * y in the dtype and, per token, a partial sum of squares of y per block; the
// product after reads next_x and the partial sums. Checked: y and next_x element by element, each token's
// partial sums' total against float64, and the product against the float64 RMSNorm of the y the device
// wrote; every shape that takes a norm, bf16 and fp16, each of `token_counts` and every tuning given of
// the add and of the product, through `kernel`.
void check_prepared_norm(GemvKernel kernel, std::initializer_list<int> token_counts,
                         const std::vector<GemvTuning>& add_tunings, const std::vector<GemvTuning>& product_tunings) {
  using E = GemvEpilogue;
  std::mt19937 rng(20240615);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (DType type : {DType::BF16, DType::F16}) {
    const double bound = type == DType::BF16 ? 1e-2 : 1e-3;
    const double rounding = type == DType::BF16 ? 1.0 / 256 : 1.0 / 2048;  // of one element of next_x
    for (const Shape& s : shapes()) {
      if (s.epilogue == E::AddF32) continue;
      Problem problem(s, type, rng, true);
      const int n = s.cols;  // the add's rows: the product's columns
      for (int add_cols : {40, 2048}) {
        // the add: W [n][add_cols], x [tokens][add_cols] in the dtype, y0 [tokens][n]
        std::vector<uint16_t> wbits(static_cast<size_t>(n) * add_cols),
            xbits(static_cast<size_t>(kMaxTokens) * add_cols);
        std::vector<double> w(wbits.size()), x(xbits.size());
        for (size_t i = 0; i < wbits.size(); ++i)
          wbits[i] = to_bits(0.2f * u(rng), type), w[i] = from_bits(wbits[i], type);
        for (size_t i = 0; i < xbits.size(); ++i) xbits[i] = to_bits(u(rng), type), x[i] = from_bits(xbits[i], type);
        std::vector<float> y0(static_cast<size_t>(kMaxTokens) * n);
        for (float& v : y0) v = 3 * u(rng);
        DeviceBuffer dw(wbits.size() * 2), dx(xbits.size() * 2), dgain(n * 4);
        dw.upload(wbits), dx.upload(xbits), dgain.upload(problem.gain());
        for (int tokens : token_counts) {
          const size_t count = static_cast<size_t>(tokens) * n;
          for (const GemvTuning& add_tuning : add_tunings) {
            const int capacity = cuda::gemv_next_parts_capacity(n, tokens);
            DeviceBuffer y((count + kGuard) * 4), next((count + kGuard) * 2), parts((capacity + kGuard) * 4);
            y.poison(), next.poison(), parts.poison();
            LLM_CUDA_CHECK(cudaMemcpy(y.get(), y0.data(), count * 4, cudaMemcpyHostToDevice));
            GemvArgs a;
            a.w[0] = dw.get(), a.rows[0] = n, a.cols = add_cols, a.x = dx.get(), a.tokens = tokens, a.out = y.get();
            a.next_gain = static_cast<const float*>(dgain.get()), a.next_x = next.get();
            a.next_parts = static_cast<float*>(parts.get());
            const int blocks = cuda::gemv(E::AddF32, a, type, nullptr, kernel, add_tuning);
            LLM_CUDA_CHECK(cudaDeviceSynchronize());
            ASSERT_GE(blocks, 1);
            ASSERT_LE(blocks * tokens, capacity);
            const std::string where = s.name() + " add of " + std::to_string(add_cols) + " columns, " +
                                      std::to_string(tokens) + " tokens, " + dtype_name(type);
            // y and next_x, element by element; the guards past them and past the partial sums untouched
            const auto yraw = y.download<float>();
            const auto nraw = next.download<uint16_t>();
            const auto praw = parts.download<uint32_t>();
            PreparedNorm prepared{next.get(), static_cast<const float*>(parts.get()), blocks, {}};
            double y_err = 0, y_norm = 0, worst_next = 0;
            std::vector<double> ss(tokens, 0.0);
            for (int t = 0; t < tokens; ++t)
              for (int r = 0; r < n; ++r) {
                const size_t at = static_cast<size_t>(t) * n + r;
                double want = y0[at];
                for (int k = 0; k < add_cols; ++k)
                  want += w[static_cast<size_t>(r) * add_cols + k] * x[static_cast<size_t>(t) * add_cols + k];
                y_err += (yraw[at] - want) * (yraw[at] - want), y_norm += want * want;
                ss[t] += static_cast<double>(yraw[at]) * yraw[at];
                const double g = static_cast<double>(problem.gain()[r]) * yraw[at], got = from_bits(nraw[at], type);
                worst_next = std::max(worst_next,
                                      std::isfinite(got) ? std::abs(got - g) / std::max(std::abs(g), 1e-3) : INFINITY);
                prepared.residual.push_back(yraw[at]);
              }
            EXPECT_LT(std::sqrt(y_err / y_norm), 1e-5) << where;
            EXPECT_LE(worst_next, rounding) << where;
            bool guards = true;
            for (size_t i = count; i < yraw.size(); ++i) guards = guards && std::isnan(yraw[i]);
            for (size_t i = count; i < nraw.size(); ++i) guards = guards && nraw[i] == 0xffffu;
            for (size_t i = static_cast<size_t>(blocks) * tokens; i < praw.size(); ++i)
              guards = guards && praw[i] == 0xffffffffu;
            EXPECT_TRUE(guards) << where << ": written past an output";
            for (int t = 0; t < tokens; ++t) {
              double total = 0;
              for (int b = 0; b < blocks; ++b) {
                float f;
                std::memcpy(&f, &praw[static_cast<size_t>(t) * blocks + b], 4);
                total += f;
              }
              EXPECT_LT(std::abs(total - ss[t]) / ss[t], 1e-5) << where << ": token " << t << "'s sum of squares";
            }
            for (const GemvTuning& product_tuning : product_tunings) {
              const double err = problem.run(tokens, kernel, product_tuning, nullptr, &prepared);
              EXPECT_LT(err, bound) << where << ", product splits " << product_tuning.splits << " warps "
                                    << product_tuning.warps << " row tiles " << product_tuning.row_tiles;
            }
          }
        }
      }
    }
  }
}

std::vector<GemvTuning> splits_of(std::initializer_list<int> splits) {
  std::vector<GemvTuning> v;
  for (int s : splits) v.emplace_back().splits = s;
  return v;
}

// At one token on the CUDA-core kernel (the model's batch-1 step): every split of the add and the product.
TEST(Gemv, CudaCoreKernelTakesTheRmsNormPreparedByTheAddBefore) {
  LLM_REQUIRE_GPU();
  check_prepared_norm(GemvKernel::CudaCore, {1}, splits_of({0, 1, 2, 4}), splits_of({0, 1, 2, 4, 8}));
}

// On the tensor-core kernel (the model's steps of 2 to 16 sequences): one n-tile of tokens, cut short or
// full, and two; the planned warps and one warp, and two row tiles a block.
TEST(Gemv, TensorCoreKernelTakesTheRmsNormPreparedByTheAddBefore) {
  LLM_REQUIRE_GPU();
  std::vector<GemvTuning> tunings(3);
  tunings[1].warps = 1;
  tunings[2].warps = 2, tunings[2].row_tiles = 2;
  check_prepared_norm(GemvKernel::TensorCore, {1, 3, 8, 9, 16}, tunings, tunings);
}

// The one-token SwiGLU that stages rows (gemv.h, gemv_stages_swiglu): which steps take it, and its outputs,
// the plain kernel's bits (whole rows: the model's plan at one token), for TinyLlama's 5,632 rows, rows that
// leave the staged blocks or the plain ones after them short, and every count of staged units; nothing
// written past h.
TEST(Gemv, StagedSwigluGivesThePlainKernelsBits) {
  LLM_REQUIRE_GPU();
  if (cuda::probe_device(0).compute_major < 9)
    GTEST_SKIP() << "the staged SwiGLU needs the copy engine's bulk copies (compute capability 9.0)";
  std::mt19937 rng(20261203);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int cols = 2048;
  for (DType type : {DType::BF16, DType::F16}) {
    EXPECT_TRUE(cuda::gemv_stages_swiglu(GemvKernel::Auto, type, cols));
    EXPECT_FALSE(cuda::gemv_stages_swiglu(GemvKernel::Auto, type, cols, false));
    EXPECT_FALSE(cuda::gemv_stages_swiglu(GemvKernel::Auto, type, 4096));
    EXPECT_FALSE(cuda::gemv_stages_swiglu(GemvKernel::TensorCore, type, cols));
    EXPECT_FALSE(cuda::gemv_stages_swiglu(GemvKernel::Auto, DType::F32, cols));
    for (int rows : {5632, 2999, 24, 9}) {
      const std::string where = std::string(dtype_name(type)) + ", " + std::to_string(rows) + " rows";
      std::vector<uint16_t> w1(static_cast<size_t>(rows) * cols), w3(w1.size()), x(cols);
      for (auto* v : {&w1, &w3})
        for (uint16_t& b : *v) b = to_bits(0.05f * u(rng), type);
      for (uint16_t& b : x) b = to_bits(u(rng), type);
      const std::vector<float> parts = {700.0f, 512.5f, 1.25f};  // partial sums of squares of the residual
      DeviceBuffer d1(w1.size() * 2), d3(w3.size() * 2), dx(x.size() * 2), dparts(parts.size() * 4);
      d1.upload(w1), d3.upload(w3), dx.upload(x), dparts.upload(parts);
      GemvArgs a;
      a.w[0] = d1.get(), a.w[1] = d3.get(), a.rows[0] = rows, a.cols = cols, a.x = dx.get(), a.tokens = 1;
      a.norm_parts = static_cast<const float*>(dparts.get()), a.norm_parts_count = 3, a.norm_eps = 1e-5f;
      a.max_shared = true;
      auto run = [&](int staged_units) {
        DeviceBuffer out((rows + kGuard) * 2);
        out.poison();
        a.out = out.get();
        GemvTuning t;
        t.staged_units = staged_units, t.splits = staged_units == 0 ? 1 : 0;
        cuda::gemv(GemvEpilogue::Swiglu, a, type, nullptr, GemvKernel::Auto, t);
        LLM_CUDA_CHECK(cudaDeviceSynchronize());
        return out.download<uint16_t>();
      };
      EXPECT_EQ(cuda::gemv_plan(GemvEpilogue::Swiglu, a, type).staged_units, 12) << where;
      const std::vector<uint16_t> plain = run(0);
      size_t finite = 0, guards = 0;
      for (int r = 0; r < rows; ++r) finite += std::isfinite(from_bits(plain[r], type)) ? 1 : 0;
      for (size_t i = rows; i < plain.size(); ++i) guards += plain[i] == 0xffffu ? 1 : 0;
      ASSERT_EQ(finite, static_cast<size_t>(rows)) << where << ": the plain kernel left NaN";
      ASSERT_EQ(guards, plain.size() - rows) << where << ": the plain kernel wrote past h";
      for (int units : {-1, 1, 8, 13}) {
        const std::vector<uint16_t> staged = run(units);
        size_t differ = 0, first = staged.size();
        for (size_t i = 0; i < staged.size(); ++i)
          if (staged[i] != plain[i]) ++differ, first = std::min(first, i);
        EXPECT_EQ(differ, 0u) << where << ", " << units << " staged units: first at " << first;
      }
    }
    GemvArgs b;  // not staged: the step does not keep the split, or rows of another width
    b.rows[0] = 5632, b.cols = cols, b.tokens = 1, b.norm_parts_count = 1;
    b.norm_parts = reinterpret_cast<const float*>(16);  // (planned only, never read)
    EXPECT_EQ(cuda::gemv_plan(GemvEpilogue::Swiglu, b, type).staged_units, 0);
    b.max_shared = true, b.cols = 4096;
    EXPECT_EQ(cuda::gemv_plan(GemvEpilogue::Swiglu, b, type).staged_units, 0);
    b.cols = cols;
    GemvTuning bad;
    bad.staged_units = 14;
    EXPECT_THROW(cuda::gemv(GemvEpilogue::Swiglu, b, type, nullptr, GemvKernel::Auto, bad), Error);
  }
}

// The CUDA-core kernel's split at one token, on the decode shapes: products of few rows (Llama-2-7B's
// wo, 2,048 pairs of 8 KB rows) are split so that the GPU has a wave of warps, products of many rows
// (its SwiGLU, 11,008 rows) and rows too short to cut (stories110M's 768 columns) are not; more tokens
// never split; rows that are not one whole batch of their kernel split further. The figures that chose the
// rule are in docs/PERFORMANCE.md.
TEST(Gemv, CudaCorePlanSplitsTheRowsOfFewRowProducts) {
  LLM_REQUIRE_GPU();
  using E = GemvEpilogue;
  auto splits = [](E e, int rows, int cols, int tokens = 1) {
    GemvArgs a;
    a.rows[0] = rows, a.cols = cols, a.tokens = tokens;
    return cuda::gemv_plan(e, a, DType::BF16, GemvKernel::CudaCore).splits;
  };
  EXPECT_GE(splits(E::AddF32, 4096, 4096), 2);
  EXPECT_GE(splits(E::AddF32, 4096, 11008), 2);
  EXPECT_EQ(splits(E::Swiglu, 11008, 4096), 1);
  EXPECT_EQ(splits(E::Swiglu, 5632, 2048), 2);  // TinyLlama's: waves of eight-chunk warps, halves hold twice as many
  EXPECT_EQ(splits(E::AddF32, 768, 768), 1);
  EXPECT_EQ(splits(E::QkvRope, 2560, 2048), 1);  // TinyLlama's q/k/v: 61% of the warps busy whole
  EXPECT_EQ(splits(E::AddF32, 4096, 4096, 2), 1);
  GemvArgs a;
  a.rows[0] = 4096, a.cols = 4096, a.tokens = 1;
  GemvTuning forced;
  forced.splits = 4;  // slices of 2 KB
  EXPECT_EQ(cuda::gemv_plan(E::AddF32, a, DType::BF16, GemvKernel::CudaCore, forced).splits, 4);
  forced.splits = 8;  // slices of 1 KB (two chunks a lane): four batches a row, one ragged batch a slice
  EXPECT_EQ(cuda::gemv_plan(E::AddF32, a, DType::BF16, GemvKernel::CudaCore, forced).splits, 8);
  EXPECT_GE(splits(E::AddF32, 2048, 5632), 2);  // TinyLlama's w2
  // A row that is one whole batch (TinyLlama's 2,048 columns: eight chunks a lane) splits only down to four;
  // others down to one chunk a lane (MobileLLM-1.5B's wo: 6.25 chunks a lane whole).
  a.rows[0] = 2048, a.cols = 2048;
  forced.splits = 2;
  EXPECT_EQ(cuda::gemv_plan(E::AddF32, a, DType::BF16, GemvKernel::CudaCore, forced).splits, 2);
  forced.splits = 4;
  EXPECT_EQ(cuda::gemv_plan(E::AddF32, a, DType::BF16, GemvKernel::CudaCore, forced).splits, 1);
  EXPECT_GE(splits(E::AddF32, 1600, 1600), 2);
  a.rows[0] = 1600, a.cols = 1600;
  forced.splits = 4;  // slices of 1.56 chunks a lane
  EXPECT_EQ(cuda::gemv_plan(E::AddF32, a, DType::BF16, GemvKernel::CudaCore, forced).splits, 4);
  forced.splits = 8;  // 0.78: shorter than a chunk a lane
  EXPECT_EQ(cuda::gemv_plan(E::AddF32, a, DType::BF16, GemvKernel::CudaCore, forced).splits, 1);
  std::printf("splits at one token: 7B wo %d, w2 %d, SwiGLU %d; TinyLlama q/k/v %d, w2 %d\n",
              splits(E::AddF32, 4096, 4096), splits(E::AddF32, 4096, 11008), splits(E::Swiglu, 11008, 4096),
              splits(E::QkvRope, 2560, 2048), splits(E::AddF32, 2048, 5632));
}

// The greedy pick folded into the classifier (ArgmaxF32, argmax_key.h): its logits are StoreF32's, bit for
// bit, and each token's keys name the host's argmax of those logits (the lowest row among equals; none where
// they hold no number), for 1 to 4 tokens, bf16, fp16 and fp32, every split of the rows. Token 0 has a tie
// at its top between rows of two warps, token 1 between the two rows of one warp, and token 2's x holds a
// NaN. The logits are poisoned first; the keys of tokens past the step stay zero.
TEST(Gemv, CudaCoreKernelFoldsTheArgmaxIntoTheProduct) {
  LLM_REQUIRE_GPU();
  std::mt19937 rng(20261202);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  constexpr int kTokens = cuda::kGemvCudaCoreMaxTokens;
  for (DType type : {DType::BF16, DType::F16, DType::F32})
    for (auto [rows, cols] : {std::pair{512, 64}, {32001, 64}, {1000, 4104}, {37, 33}, {4000, 2048}}) {
      std::vector<float> w(static_cast<size_t>(rows) * cols), x(static_cast<size_t>(kTokens) * cols);
      for (float& v : w) v = normal(rng);
      for (float& v : x) v = normal(rng);
      // rows a < b tie at token 0's top, rows c, c + 1 (one warp's pair) at token 1's
      const int a = 3, b = rows - 7, c = 10;
      for (int j = 0; j < cols; ++j) {
        w[static_cast<size_t>(a) * cols + j] = w[static_cast<size_t>(b) * cols + j] = 4.0f * x[j];
        w[static_cast<size_t>(c) * cols + j] = w[static_cast<size_t>(c + 1) * cols + j] = 4.0f * x[cols + j];
      }
      x[2 * static_cast<size_t>(cols) + cols / 2] = std::nanf("");
      const size_t e = dtype_size(type);
      DeviceBuffer dw(w.size() * e), dx(x.size() * e);
      if (type == DType::F32) {
        dw.upload(w), dx.upload(x);
      } else {
        std::vector<uint16_t> wb(w.size()), xb(x.size());
        for (size_t i = 0; i < w.size(); ++i) wb[i] = to_bits(w[i], type);
        for (size_t i = 0; i < x.size(); ++i) xb[i] = to_bits(x[i], type);
        dw.upload(wb), dx.upload(xb);
      }
      const size_t n_keys = static_cast<size_t>(kTokens) * cuda::kArgmaxTokenWords;
      DeviceBuffer plain(static_cast<size_t>(kTokens) * rows * sizeof(float));
      DeviceBuffer folded(static_cast<size_t>(kTokens) * rows * sizeof(float)), keys(n_keys * sizeof(uint64_t));
      for (int tokens = 1; tokens <= kTokens; ++tokens)
        for (const GemvTuning& tuning : cuda_core_splits()) {
          const std::string what = std::string(dtype_name(type)) + " " + std::to_string(rows) + "x" +
                                   std::to_string(cols) + " tokens " + std::to_string(tokens) + " splits " +
                                   std::to_string(tuning.splits);
          GemvArgs args;
          args.w[0] = dw.get(), args.rows[0] = rows, args.cols = cols, args.x = dx.get(), args.tokens = tokens;
          plain.poison(), folded.poison();
          LLM_CUDA_CHECK(cudaMemset(keys.get(), 0, n_keys * sizeof(uint64_t)));
          args.out = plain.get();
          cuda::gemv(GemvEpilogue::StoreF32, args, type, nullptr, GemvKernel::CudaCore, tuning);
          args.out = folded.get(), args.argmax_keys = static_cast<uint64_t*>(keys.get());
          cuda::gemv(GemvEpilogue::ArgmaxF32, args, type, nullptr, GemvKernel::CudaCore, tuning);
          LLM_CUDA_CHECK(cudaDeviceSynchronize());
          const auto want = plain.download<uint32_t>(), got = folded.download<uint32_t>();
          const auto logits = folded.download<float>();
          const auto k = keys.download<uint64_t>();
          for (int t = 0; t < kTokens; ++t) {
            // the slots, and nothing between them
            const uint64_t* tk = k.data() + cuda::argmax_slot_word(t, 0);
            const uint64_t top = cuda::argmax_top_key(tk);
            for (int i = 0; i < cuda::kArgmaxTokenWords; ++i)
              if (i % cuda::kArgmaxSlotStride != 0) {
                EXPECT_EQ(tk[i], 0u) << what << ": token " << t << ", word " << i << " is not a slot";
              }
            if (t >= tokens) {
              EXPECT_EQ(top, 0u) << what << ": token " << t << " is past the step";
              continue;
            }
            const size_t row0 = static_cast<size_t>(t) * rows;
            EXPECT_TRUE(std::equal(want.begin() + row0, want.begin() + row0 + rows, got.begin() + row0))
                << what << ": token " << t << "'s logits differ from StoreF32's";
            int best = cuda::kArgmaxNone;
            for (int r = 0; r < rows; ++r) {
              const float v = logits[row0 + r];
              if (v > -FLT_MAX && (best == cuda::kArgmaxNone || v > logits[row0 + best])) best = r;
            }
            EXPECT_EQ(cuda::argmax_key_row(top), best) << what << ": token " << t;
            const int planted[] = {a, c, cuda::kArgmaxNone};  // the ties, then no number
            if (t < 3) {
              EXPECT_EQ(best, planted[t]) << what << ": token " << t;
            }
          }
        }
      std::printf("%s %dx%d: folded picks equal the host's argmax, 1-%d tokens, every split\n", dtype_name(type), rows,
                  cols, kTokens);
    }
}

// The same with the residual written just before the product by a kernel it overlaps (PDL), as the
// residual add before it does in the model: the sum of squares and the products must both see it whole.
TEST(Gemv, FusedRmsNormReadsTheResidualOnlyOnceItIsWritten) {
  LLM_REQUIRE_GPU();
  using E = GemvEpilogue;
  std::mt19937 rng(20240613);
  const XProducer producer(rng);
  for (DType type : {DType::BF16, DType::F16}) {
    const double bound = type == DType::BF16 ? 1e-2 : 1e-3;
    for (const Shape& s : std::vector<Shape>{{E::QkvRope, {64, 32, 32}, 64, 8},
                                             {E::Swiglu, {172, 0, 0}, 64},
                                             {E::StoreF32, {512, 0, 0}, 64},
                                             {E::StoreF32, {512, 0, 0}, 36}}) {
      Problem problem(s, type, rng, true);
      for (int tokens = 1; tokens <= cuda::kGemvCudaCoreMaxTokens; ++tokens)
        for (int round = 0; round < 3; ++round) {
          const double err = problem.run(tokens, GemvKernel::CudaCore, {}, &producer);
          EXPECT_LT(err, bound) << dtype_name(type) << " " << s.name() << " tokens " << tokens << " round " << round;
        }
    }
  }
}

TEST(Gemv, AutoPlanFollowsTheTokenCount) {
  LLM_REQUIRE_GPU();
  GemvArgs a;
  a.rows[0] = 4096, a.cols = 4096;
  for (int tokens = 1; tokens <= cuda::kGemvMaxTokens; ++tokens) {
    a.tokens = tokens;
    const GemvTuning plan = cuda::gemv_plan(GemvEpilogue::StoreF32, a, DType::BF16);
    const bool tensor_cores = tokens > cuda::kGemvAutoCudaCoreMaxTokens;
    EXPECT_EQ(plan.warps > 0, tensor_cores) << tokens;
    if (tensor_cores) {
      EXPECT_EQ(plan.row_tiles, tokens > 8 ? 2 : 1) << tokens;
      std::printf("4096x4096 bf16, %2d tokens: %d warps a block, %d row tile(s)\n", tokens, plan.warps, plan.row_tiles);
    }
    EXPECT_EQ(cuda::gemv_plan(GemvEpilogue::StoreF32, a, DType::F32).warps, 0);  // fp32: CUDA cores
  }
}

// The RMSNorm prepared by the product before (norm_parts, next_x) is the CUDA-core kernel's at one token
// and the tensor-core kernel's at any count; asked for elsewhere, or with its pieces missing, gemv says
// what is wrong before it launches anything.
TEST(Gemv, APreparedNormAskedForWrongIsAClearError) {
  EXPECT_TRUE(cuda::gemv_prepares_norm(GemvKernel::Auto, DType::BF16, 1));
  EXPECT_TRUE(cuda::gemv_prepares_norm(GemvKernel::Auto, DType::BF16, 8));  // the tensor-core kernel
  EXPECT_TRUE(cuda::gemv_prepares_norm(GemvKernel::CudaCore, DType::F32, 1));
  EXPECT_FALSE(cuda::gemv_prepares_norm(GemvKernel::CudaCore, DType::BF16, 2));
  EXPECT_FALSE(cuda::gemv_prepares_norm(GemvKernel::Auto, DType::F32, 2));  // fp32: CUDA cores only
  EXPECT_TRUE(cuda::gemv_prepares_norm(GemvKernel::TensorCore, DType::BF16, 1));
  EXPECT_TRUE(cuda::gemv_prepares_norm(GemvKernel::TensorCore, DType::F16, 16));
  EXPECT_FALSE(cuda::gemv_prepares_norm(GemvKernel::TensorCore, DType::BF16, 17));
  EXPECT_EQ(cuda::gemv_next_parts_capacity(4096), 2048);
  EXPECT_EQ(cuda::gemv_next_parts_capacity(37), 19);
  EXPECT_EQ(cuda::gemv_next_parts_capacity(2048, 16), 2048);  // 128 tensor-core blocks a token
  EXPECT_EQ(cuda::gemv_next_parts_capacity(37, 16), 48);
  auto message = [](GemvEpilogue e, const GemvArgs& a, GemvKernel kernel) -> std::string {
    try {
      cuda::gemv(e, a, DType::BF16, nullptr, kernel);
    } catch (const Error& err) {
      return err.what();
    }
    return "(no error)";
  };
  const float part = 1.0f, gain = 1.0f;
  float parts_out[8];
  uint16_t next_x[16];
  GemvArgs reads;  // a product reading a prepared norm
  reads.rows[0] = 16, reads.cols = 16, reads.tokens = 1;
  reads.norm_parts = &part, reads.norm_parts_count = 1;
  const std::string where = "an RMSNorm prepared by the product before needs the tensor-core kernel or one token";
  reads.tokens = 2;
  EXPECT_NE(message(GemvEpilogue::StoreF32, reads, GemvKernel::CudaCore).find(where + " (2 tokens"), std::string::npos);
  reads.tokens = 1;
  const std::string pieces = "norm_parts needs a product other than AddF32, no norm_gain, and at least one partial sum";
  EXPECT_NE(message(GemvEpilogue::AddF32, reads, GemvKernel::CudaCore).find(pieces), std::string::npos);
  reads.norm_parts_count = 0;
  EXPECT_NE(message(GemvEpilogue::Swiglu, reads, GemvKernel::CudaCore).find(pieces + " (0)"), std::string::npos);
  reads.norm_parts_count = 1, reads.norm_gain = &gain;
  EXPECT_NE(message(GemvEpilogue::QkvRope, reads, GemvKernel::CudaCore).find(pieces), std::string::npos);

  GemvArgs writes;  // a residual add writing one
  writes.rows[0] = 16, writes.cols = 16, writes.tokens = 1;
  writes.next_x = next_x, writes.next_gain = &gain, writes.next_parts = parts_out;
  const std::string writer = "next_x is written by an AddF32 product, with next_gain and next_parts";
  EXPECT_NE(message(GemvEpilogue::StoreF32, writes, GemvKernel::CudaCore).find(writer), std::string::npos);
  writes.next_gain = nullptr;
  EXPECT_NE(message(GemvEpilogue::AddF32, writes, GemvKernel::CudaCore).find(writer), std::string::npos);
  writes.next_gain = &gain, writes.next_parts = nullptr;
  EXPECT_NE(message(GemvEpilogue::AddF32, writes, GemvKernel::CudaCore).find(writer), std::string::npos);
  writes.next_parts = parts_out, writes.tokens = 3;
  EXPECT_NE(message(GemvEpilogue::AddF32, writes, GemvKernel::CudaCore).find(where), std::string::npos);

  GemvArgs picks;  // the argmax folded in: keys, and the CUDA-core kernel
  picks.rows[0] = 16, picks.cols = 16, picks.tokens = 1;
  const std::string fold = "the argmax folded into the product needs argmax_keys and the CUDA-core kernel";
  EXPECT_NE(message(GemvEpilogue::ArgmaxF32, picks, GemvKernel::CudaCore).find(fold), std::string::npos);
  uint64_t keys[cuda::kArgmaxTokenWords];
  picks.argmax_keys = keys;
  EXPECT_NE(message(GemvEpilogue::ArgmaxF32, picks, GemvKernel::TensorCore).find(fold), std::string::npos);
  EXPECT_TRUE(cuda::gemv_folds_argmax(GemvKernel::Auto, DType::BF16, 1));
  EXPECT_TRUE(cuda::gemv_folds_argmax(GemvKernel::Auto, DType::BF16, cuda::kGemvAutoCudaCoreMaxTokens));
  EXPECT_FALSE(cuda::gemv_folds_argmax(GemvKernel::Auto, DType::BF16, cuda::kGemvAutoCudaCoreMaxTokens + 1));
  EXPECT_TRUE(cuda::gemv_folds_argmax(GemvKernel::Auto, DType::F32, 4));
}

// A model's step resolves Auto by its token count and the model's width (gemv_resolve): the CUDA-core kernel
// up to 2 tokens, or up to 4 on a model at most kGemvAutoNarrowDim wide, and always for fp32; a kernel asked
// for by name is kept.
TEST(Gemv, AutoResolvesByTheTokenCountAndTheModelsWidth) {
  using cuda::gemv_resolve;
  constexpr auto cc = GemvKernel::CudaCore, tc = GemvKernel::TensorCore, automatic = GemvKernel::Auto;
  for (int dim : {64, 768, cuda::kGemvAutoNarrowDim}) {
    for (int tokens = 1; tokens <= cuda::kGemvCudaCoreMaxTokens; ++tokens)
      EXPECT_EQ(gemv_resolve(automatic, DType::BF16, dim, tokens), cc) << dim << " wide, " << tokens;
    EXPECT_EQ(gemv_resolve(automatic, DType::F16, dim, cuda::kGemvCudaCoreMaxTokens + 1), tc) << dim;
  }
  for (int dim : {cuda::kGemvAutoNarrowDim + 1, 2048, 4096}) {
    EXPECT_EQ(gemv_resolve(automatic, DType::BF16, dim, 1), cc) << dim;
    EXPECT_EQ(gemv_resolve(automatic, DType::BF16, dim, cuda::kGemvAutoCudaCoreMaxTokens), cc) << dim;
    EXPECT_EQ(gemv_resolve(automatic, DType::BF16, dim, cuda::kGemvAutoCudaCoreMaxTokens + 1), tc) << dim;
    EXPECT_EQ(gemv_resolve(automatic, DType::BF16, dim, cuda::kGemvMaxTokens), tc) << dim;
  }
  EXPECT_EQ(gemv_resolve(automatic, DType::F32, 4096, 4), cc);
  EXPECT_EQ(gemv_resolve(tc, DType::BF16, 64, 1), tc);
  EXPECT_EQ(gemv_resolve(cc, DType::BF16, 4096, 4), cc);
}

// What runs without a GPU: the token limits and LLM_GEMV.
TEST(Gemv, TokenLimitsAndTheLlmGemvVariable) {
  using cuda::gemv_max_tokens;
  EXPECT_EQ(gemv_max_tokens(GemvKernel::Auto, DType::BF16), 16);
  EXPECT_EQ(gemv_max_tokens(GemvKernel::TensorCore, DType::F16), 16);
  EXPECT_EQ(gemv_max_tokens(GemvKernel::CudaCore, DType::BF16), 4);
  EXPECT_EQ(gemv_max_tokens(GemvKernel::TensorCore, DType::F32), 4);
  EXPECT_EQ(gemv_max_tokens(GemvKernel::Auto, DType::F32), 4);
  GemvArgs a;
  a.rows[0] = 16, a.cols = 16;
  for (auto [kernel, type, tokens] : {std::tuple{GemvKernel::Auto, DType::BF16, 17},
                                      {GemvKernel::CudaCore, DType::BF16, 5},
                                      {GemvKernel::Auto, DType::F32, 5},
                                      {GemvKernel::TensorCore, DType::F16, 0}}) {
    a.tokens = tokens;
    EXPECT_THROW(cuda::gemv(GemvEpilogue::StoreF32, a, type, nullptr, kernel), Error) << tokens;
  }
  // A fused RMSNorm: the CUDA-core kernel's, never before a residual add.
  EXPECT_TRUE(cuda::gemv_normalizes_input(GemvKernel::Auto, DType::BF16, 1));
  EXPECT_TRUE(cuda::gemv_normalizes_input(GemvKernel::Auto, DType::BF16, cuda::kGemvAutoCudaCoreMaxTokens));
  EXPECT_FALSE(cuda::gemv_normalizes_input(GemvKernel::Auto, DType::BF16, cuda::kGemvAutoCudaCoreMaxTokens + 1));
  EXPECT_TRUE(cuda::gemv_normalizes_input(GemvKernel::Auto, DType::F32, 4));
  EXPECT_TRUE(cuda::gemv_normalizes_input(GemvKernel::CudaCore, DType::F16, 4));
  EXPECT_FALSE(cuda::gemv_normalizes_input(GemvKernel::TensorCore, DType::BF16, 1));
  const float gain = 1.0f;
  a.norm_gain = &gain;
  for (auto [epilogue, kernel, tokens] : {std::tuple{GemvEpilogue::StoreF32, GemvKernel::TensorCore, 1},
                                          {GemvEpilogue::StoreF32, GemvKernel::Auto, 8},
                                          {GemvEpilogue::AddF32, GemvKernel::CudaCore, 1}}) {
    a.tokens = tokens;
    EXPECT_THROW(cuda::gemv(epilogue, a, DType::BF16, nullptr, kernel), Error) << tokens;
  }
  a.norm_gain = nullptr;

  const char* saved = std::getenv("LLM_GEMV");
  const std::string restore = saved ? saved : "";
  for (auto [value, kernel] : {std::pair{"", GemvKernel::Auto},
                               {"auto", GemvKernel::Auto},
                               {"cuda_core", GemvKernel::CudaCore},
                               {"tensor_core", GemvKernel::TensorCore}}) {
    setenv("LLM_GEMV", value, 1);
    EXPECT_EQ(cuda::gemv_kernel_from_env(), kernel) << value;
    if (*value) {
      EXPECT_STREQ(cuda::gemv_kernel_name(kernel), value);
    }
  }
  setenv("LLM_GEMV", "tensor-core", 1);
  try {
    cuda::gemv_kernel_from_env();
    ADD_FAILURE() << "LLM_GEMV=tensor-core accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("LLM_GEMV"), std::string::npos) << e.what();
  }
  if (saved)
    setenv("LLM_GEMV", restore.c_str(), 1);
  else
    unsetenv("LLM_GEMV");
}

// Sets environment variable `name` to each good value in turn, for which `parse` must return the value paired
// with it, then to each bad one, for which it must throw an Error naming the variable and the value; then
// restores the variable.
template <typename T, typename Parse>
void check_env_variable(const char* name, std::initializer_list<std::pair<const char*, T>> good,
                        std::initializer_list<const char*> bad, Parse parse) {
  const char* saved = std::getenv(name);
  const std::string restore = saved ? saved : "";
  for (const auto& [value, want] : good) {
    setenv(name, value, 1);
    EXPECT_EQ(parse(), want) << name << "=" << value;
  }
  for (const char* value : bad) {
    setenv(name, value, 1);
    try {
      parse();
      ADD_FAILURE() << name << "=" << value << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string(name) + "='" + value + "'"), std::string::npos) << e.what();
    }
  }
  if (saved)
    setenv(name, restore.c_str(), 1);
  else
    unsetenv(name);
}

// LLM_GEMV_STAGE: on (or unset, or empty) stages where gemv_stages_swiglu can, off never; anything else is an
// error naming the variable and the value.
TEST(Gemv, TheLlmGemvStageVariable) {
  check_env_variable<bool>("LLM_GEMV_STAGE", {{"", true}, {"off", false}, {"on", true}}, {"0", "auto", "ON", "12"},
                           [] { return cuda::gemv_stage_from_env(); });
}

// LLM_GEMV_SPLITS, and a split the CUDA-core kernel does not take, are errors that name what was wrong.
TEST(Gemv, TheLlmGemvSplitsVariable) {
  check_env_variable<int>("LLM_GEMV_SPLITS", {{"", 0}, {"auto", 0}, {"1", 1}, {"2", 2}, {"4", 4}, {"8", 8}},
                          {"3", "16", "2x", "two", "-1"}, [] { return cuda::gemv_splits_from_env(); });
  GemvArgs a;
  a.rows[0] = 16, a.cols = 16, a.tokens = 1;
  GemvTuning tuning;
  tuning.splits = 3;
  try {
    cuda::gemv(GemvEpilogue::StoreF32, a, DType::BF16, nullptr, GemvKernel::CudaCore, tuning);
    ADD_FAILURE() << "3 warps a row unit accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("3 warps a row unit"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace llm
