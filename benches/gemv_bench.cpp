// gemv_bench: the decode-step matrix-vector products alone (gemv.h), on the product shapes of Llama-2-7B,
// TinyLlama and stories110M, beside cuBLAS: microseconds per call, GB/s of weight bytes and their share of
// the device's copy bandwidth (cudaMemcpy device to device of 2 GiB, bytes read + written, measured in
// the same run), for the CUDA-core kernel (up to 4 tokens; also with the RMSNorm before it fused, from the
// fp32 residual, and at one token prepared by the add before it (x in the model dtype and partial sums of
// squares) as a batch-1 step runs the q/k/v, SwiGLU and classifier products), the tensor-core kernel and cuBLAS
// (cublasGemmEx as LlamaCuda::gemm issues it: q, k and v as three products, W1 and W3 as two; the RoPE and
// SwiGLU kernels that path needs after them are not counted). A product is a fixed stream of weight
// bytes whatever the tokens, so the share of the copy bandwidth says how close a kernel is to the floor.
//
// Timing: --calls calls captured in one CUDA graph (PDL edges between the GEMV kernels, as in a decode
// step), the weights rotated over as many copies as make the working set at least --working-set MiB (the
// H200's L2 is 50 MB), best of --rounds replays after a warm-up. The check column compares the outputs of
// both GEMV kernels with cuBLAS's on the same weights (plain products over the whole weight block; relative
// L2): a wrong kernel shows there before it shows anywhere else.
//
// A second table sweeps the tensor-core kernel's split (warps a block x 16-row tiles a block) on
// --sweep-shapes at --sweep-tokens, beside the plan gemv chooses.
//
//   gemv_bench [--shapes stories110M,tinyllama,llama2-7b] [--tokens 1,2,4,8,16] [--dtype bf16]
//              [--calls 200] [--rounds 5] [--working-set 256] [--sweep-shapes llama2-7b] [--sweep-tokens 1,8,16]
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "best_event_time.h"
#include "copy_bandwidth.h"
#include "cuda_check.h"
#include "cuda_device.h"
#include "dtype.h"
#include "gemv.h"
#include "random_checkpoint.h"

namespace {

using llm::DType;
using llm::cuda::GemvArgs;
using llm::cuda::GemvEpilogue;
using llm::cuda::GemvKernel;
using llm::cuda::GemvTuning;

constexpr int kMaxTokens = llm::cuda::kGemvMaxTokens;
constexpr int kSlots = 16, kPositions = 64;
constexpr int kNormParts = 128;  // partial sums of squares a prepared norm comes with (the add's blocks)

// What a product that takes the RMSNorm before it is given (time_gemv).
enum class NormInput { None, Residual, Prepared };

// Device-to-device copy bandwidth (copy_bandwidth.h), GB/s.
double copy_bandwidth() { return copy_bandwidth_gbs(size_t{2} << 30, 5); }

// A device allocation freed with its owner.
struct DeviceMemory {
  explicit DeviceMemory(size_t bytes) { LLM_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 16))); }
  ~DeviceMemory() { cudaFree(p); }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  template <typename V = void>
  V* as() const {
    return static_cast<V*>(p);
  }
  void* p = nullptr;
};

// One product of a decode step, in its epilogue.
struct Product {
  std::string name;
  GemvEpilogue epilogue;
  int rows[3];  // QkvRope: q, k, v; Swiglu: W1 (and W3 as many)
  int cols;
  int head_dim = 0;
  int weight_rows() const { return epilogue == GemvEpilogue::Swiglu ? 2 * rows[0] : rows[0] + rows[1] + rows[2]; }
};

std::vector<Product> products(const llm::ModelConfig& c) {
  const int d = c.dim, kv = c.kv_dim(), h = c.hidden_dim;
  return {{"qkv", GemvEpilogue::QkvRope, {d, kv, kv}, d, c.head_dim()},
          {"wo", GemvEpilogue::AddF32, {d, 0, 0}, d},
          {"w1|w3", GemvEpilogue::Swiglu, {h, 0, 0}, d},
          {"w2", GemvEpilogue::AddF32, {d, 0, 0}, h},
          {"classifier", GemvEpilogue::StoreF32, {c.vocab_size, 0, 0}, d}};
}

struct Options {
  DType type = DType::BF16;
  int calls = 200, rounds = 5;
  size_t working_set = size_t{256} << 20;
};

// A product's weights in enough copies to defeat the L2, its inputs and outputs, and ways to time it.
class Bench {
 public:
  Bench(const Product& p, const Options& o, cublasHandle_t cublas, cudaStream_t stream)
      : p_(p), o_(o), cublas_(cublas), stream_(stream) {
    const size_t e = llm::dtype_size(o.type);
    bytes_ = static_cast<size_t>(p.weight_rows()) * p.cols * e;
    copies_ = static_cast<int>(std::clamp<size_t>((o.working_set + bytes_ - 1) / bytes_, 2, 512));
    weights_ = std::make_unique<DeviceMemory>(bytes_ * copies_);
    // Random values in [-1, 1), 16 MiB of them tiled over every copy (speed does not depend on them).
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    const size_t tile = std::min<size_t>(size_t{8} << 20, bytes_ * copies_ / e);
    std::vector<uint16_t> host(tile);
    for (auto& v : host) v = to_bits(u(rng));
    DeviceMemory staging(tile * e);
    LLM_CUDA_CHECK(cudaMemcpy(staging.p, host.data(), tile * e, cudaMemcpyHostToDevice));
    for (size_t off = 0; off < bytes_ * copies_; off += tile * e)
      LLM_CUDA_CHECK(cudaMemcpy(weights_->as<char>() + off, staging.p, std::min(tile * e, bytes_ * copies_ - off),
                                cudaMemcpyDeviceToDevice));
    std::vector<uint16_t> x(static_cast<size_t>(kMaxTokens) * p.cols);
    for (auto& v : x) v = to_bits(u(rng));
    x_ = std::make_unique<DeviceMemory>(x.size() * e);
    LLM_CUDA_CHECK(cudaMemcpy(x_->p, x.data(), x.size() * e, cudaMemcpyHostToDevice));
    // The fp32 residual and the RMSNorm's gain, for the products that take the norm in a decode step.
    std::vector<float> residual(static_cast<size_t>(kMaxTokens) * p.cols), gain(p.cols);
    for (auto& v : residual) v = u(rng);
    for (auto& v : gain) v = 1.0f + 0.1f * u(rng);
    residual_ = std::make_unique<DeviceMemory>(residual.size() * sizeof(float));
    gain_ = std::make_unique<DeviceMemory>(gain.size() * sizeof(float));
    LLM_CUDA_CHECK(cudaMemcpy(residual_->p, residual.data(), residual.size() * sizeof(float), cudaMemcpyHostToDevice));
    LLM_CUDA_CHECK(cudaMemcpy(gain_->p, gain.data(), gain.size() * sizeof(float), cudaMemcpyHostToDevice));
    // The norm as the residual add before prepares it at one token: partial sums of squares, one a block.
    std::vector<float> parts(kNormParts);
    for (auto& v : parts) v = static_cast<float>(p.cols) / kNormParts * (1.0f + 0.5f * u(rng));
    parts_ = std::make_unique<DeviceMemory>(parts.size() * sizeof(float));
    LLM_CUDA_CHECK(cudaMemcpy(parts_->p, parts.data(), parts.size() * sizeof(float), cudaMemcpyHostToDevice));
    const size_t out_rows = static_cast<size_t>(kMaxTokens) * p.weight_rows();
    out_ = std::make_unique<DeviceMemory>(out_rows * sizeof(float));
    out2_ = std::make_unique<DeviceMemory>(out_rows * sizeof(float));
    LLM_CUDA_CHECK(cudaMemset(out_->p, 0, out_rows * sizeof(float)));
    LLM_CUDA_CHECK(cudaMemset(out2_->p, 0, out_rows * sizeof(float)));
    if (p.epilogue == GemvEpilogue::QkvRope) {
      const size_t cache = static_cast<size_t>(kSlots) * kPositions * p.rows[1] * e;
      k_cache_ = std::make_unique<DeviceMemory>(cache);
      v_cache_ = std::make_unique<DeviceMemory>(cache);
      std::vector<float> cs;
      for (int pos = 0; pos < kPositions; ++pos)
        for (int i = 0; i < p.head_dim / 2; ++i) {
          const double a = pos * std::pow(10000.0, -2.0 * i / p.head_dim);
          cs.push_back(static_cast<float>(std::cos(a)));
          cs.push_back(static_cast<float>(std::sin(a)));
        }
      cos_sin_ = std::make_unique<DeviceMemory>(cs.size() * sizeof(float));
      LLM_CUDA_CHECK(cudaMemcpy(cos_sin_->p, cs.data(), cs.size() * sizeof(float), cudaMemcpyHostToDevice));
      std::vector<int32_t> meta(2 * kMaxTokens);
      for (int t = 0; t < kMaxTokens; ++t) meta[t] = 17 + t, meta[kMaxTokens + t] = t;  // pos, slot
      meta_ = std::make_unique<DeviceMemory>(meta.size() * sizeof(int32_t));
      LLM_CUDA_CHECK(cudaMemcpy(meta_->p, meta.data(), meta.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    }
  }

  size_t weight_bytes() const { return bytes_; }

  // Whether a decode step gives this product the RMSNorm before it (the CUDA-core kernel, batch 1).
  bool takes_norm() const { return p_.epilogue != GemvEpilogue::AddF32; }

  // The product for `tokens` tokens on copy `i` of the weights, in its own epilogue.
  GemvArgs args(int i, int tokens) const {
    const size_t e = llm::dtype_size(o_.type);
    const char* w = weights_->as<char>() + static_cast<size_t>(i) * bytes_;
    GemvArgs a;
    a.cols = p_.cols, a.x = x_->p, a.tokens = tokens, a.out = out_->p;
    a.rows[0] = p_.rows[0], a.rows[1] = p_.rows[1], a.rows[2] = p_.rows[2];
    a.w[0] = w;
    if (p_.epilogue == GemvEpilogue::QkvRope) {
      a.w[1] = w + static_cast<size_t>(p_.rows[0]) * p_.cols * e;
      a.w[2] = w + static_cast<size_t>(p_.rows[0] + p_.rows[1]) * p_.cols * e;
      a.head_dim = p_.head_dim;
      a.cos_sin = cos_sin_->as<float>();
      a.pos = meta_->as<int32_t>();
      a.slot = meta_->as<int32_t>() + kMaxTokens;
      a.k_cache = k_cache_->p, a.v_cache = v_cache_->p;
      a.seq_stride = static_cast<int64_t>(kPositions) * p_.rows[1];
    } else if (p_.epilogue == GemvEpilogue::Swiglu) {
      a.w[1] = w + static_cast<size_t>(p_.rows[0]) * p_.cols * e;
    }
    return a;
  }

  // Microseconds per call of a GEMV kernel; -1 where it does not take `tokens`. norm: the product applies
  // the RMSNorm before it, from the fp32 residual (Residual) or prepared by the add before (Prepared: x in
  // the model dtype and partial sums of squares, as a batch-1 decode step runs it); -1 where it does not.
  double time_gemv(GemvKernel kernel, int tokens, const GemvTuning& tuning = {}, NormInput norm = NormInput::None) {
    if (tokens > llm::cuda::gemv_max_tokens(kernel, o_.type)) return -1;
    if (norm == NormInput::Residual && (!takes_norm() || !llm::cuda::gemv_normalizes_input(kernel, o_.type, tokens)))
      return -1;
    if (norm == NormInput::Prepared && (!takes_norm() || !llm::cuda::gemv_prepares_norm(kernel, o_.type, tokens)))
      return -1;
    return time_calls([&](int i) {
      GemvArgs a = args(i, tokens);
      a.norm_eps = 1e-5f;
      if (norm == NormInput::Residual) a.x = residual_->p, a.norm_gain = gain_->as<float>();
      if (norm == NormInput::Prepared) a.norm_parts = parts_->as<float>(), a.norm_parts_count = kNormParts;
      llm::cuda::gemv(p_.epilogue, a, o_.type, stream_, kernel, tuning);
    });
  }

  // Microseconds per call of the cuBLAS path's products (as LlamaCuda::gemm: y = W x, W row-major).
  double time_cublas(int tokens) {
    const size_t e = llm::dtype_size(o_.type);
    const bool fp32_out = p_.epilogue == GemvEpilogue::AddF32 || p_.epilogue == GemvEpilogue::StoreF32 ||
                          p_.epilogue == GemvEpilogue::Swiglu;
    const float beta = p_.epilogue == GemvEpilogue::AddF32 ? 1.0f : 0.0f;
    return time_calls([&](int i) {
      const char* w = weights_->as<char>() + static_cast<size_t>(i) * bytes_;
      int done = 0;
      for (int m = 0; m < 3; ++m) {
        const int rows = p_.epilogue == GemvEpilogue::Swiglu ? (m < 2 ? p_.rows[0] : 0) : p_.rows[m];
        if (rows == 0) continue;
        gemm(w + static_cast<size_t>(done) * p_.cols * e, rows, tokens, out_->as<char>(), fp32_out, beta);
        done += rows;
      }
    });
  }

  // Relative L2 error of each GEMV kernel's plain product (StoreF32 over the whole weight block, copy 0)
  // against cuBLAS's; -1 where the kernel does not take `tokens`.
  std::pair<double, double> check(int tokens) {
    const int rows = p_.weight_rows();
    const size_t n = static_cast<size_t>(tokens) * rows;
    gemm(weights_->p, rows, tokens, out2_->p, true, 0.0f);
    std::vector<float> ref(n), got(n);
    LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    LLM_CUDA_CHECK(cudaMemcpy(ref.data(), out2_->p, n * sizeof(float), cudaMemcpyDeviceToHost));
    double err[2] = {-1, -1};
    const GemvKernel kernels[2] = {GemvKernel::CudaCore, GemvKernel::TensorCore};
    for (int k = 0; k < 2; ++k) {
      if (tokens > llm::cuda::gemv_max_tokens(kernels[k], o_.type)) continue;
      GemvArgs a;
      a.w[0] = weights_->p, a.rows[0] = rows, a.cols = p_.cols, a.x = x_->p, a.tokens = tokens, a.out = out_->p;
      LLM_CUDA_CHECK(cudaMemsetAsync(out_->p, 0xff, n * sizeof(float), stream_));
      llm::cuda::gemv(GemvEpilogue::StoreF32, a, o_.type, stream_, kernels[k]);
      LLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
      LLM_CUDA_CHECK(cudaMemcpy(got.data(), out_->p, n * sizeof(float), cudaMemcpyDeviceToHost));
      double e2 = 0, r2 = 0;
      for (size_t i = 0; i < n; ++i)
        e2 += (got[i] - double(ref[i])) * (got[i] - double(ref[i])), r2 += double(ref[i]) * ref[i];
      err[k] = std::isfinite(e2) ? std::sqrt(e2 / r2) : INFINITY;
    }
    return {err[0], err[1]};
  }

 private:
  uint16_t to_bits(float v) const {
    if (o_.type == DType::BF16) return static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(v)).x;
    return static_cast<__half_raw>(__float2half_rn(v)).x;
  }

  void gemm(const void* w, int rows, int tokens, void* y, bool y_f32, float beta) {
    const float alpha = 1.0f;
    const cudaDataType t = o_.type == DType::F16 ? CUDA_R_16F : CUDA_R_16BF;
    LLM_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, rows, tokens, p_.cols, &alpha, w, t, p_.cols,
                                  x_->p, t, p_.cols, &beta, y, y_f32 ? CUDA_R_32F : t, rows, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
  }

  // `calls` calls of call(copy) captured in a graph, copies in rotation; microseconds per call, best round.
  double time_calls(const std::function<void(int)>& call) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    const int calls = std::max(o_.calls, copies_);
    LLM_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < calls; ++i) call(i % copies_);
    LLM_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    LLM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    LLM_CUDA_CHECK(cudaGraphDestroy(graph));
    LLM_CUDA_CHECK(cudaGraphLaunch(exec, stream_));  // warm-up
    const float best = best_event_ms(o_.rounds, stream_, [&] { LLM_CUDA_CHECK(cudaGraphLaunch(exec, stream_)); });
    cudaGraphExecDestroy(exec);
    return 1e3 * best / calls;
  }

  Product p_;
  Options o_;
  cublasHandle_t cublas_;
  cudaStream_t stream_;
  size_t bytes_ = 0;
  int copies_ = 0;
  std::unique_ptr<DeviceMemory> weights_, x_, out_, out2_, k_cache_, v_cache_, cos_sin_, meta_, residual_, gain_,
      parts_;
};

std::string plan_label(const GemvTuning& t) { return std::to_string(t.warps) + "w x " + std::to_string(t.row_tiles); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Decode-step matrix-vector products alone: the CUDA-core and tensor-core GEMV kernels and cuBLAS"};
  std::vector<std::string> shapes = {"stories110M", "tinyllama", "llama2-7b"}, sweep_shapes = {"llama2-7b"};
  std::vector<int> token_counts = {1, 2, 4, 8, 16}, sweep_tokens = {1, 8, 16};
  std::string dtype = "bf16";
  Options o;
  int working_set_mib = 256;
  app.add_option("--shapes", shapes, "model presets whose products are timed")->delimiter(',');
  app.add_option("--tokens", token_counts, "tokens per product (1 to 16)")->delimiter(',');
  app.add_option("--dtype", dtype, "bf16 or fp16")->capture_default_str()->check(CLI::IsMember({"bf16", "fp16"}));
  app.add_option("--calls", o.calls, "calls per graph (at least one per weight copy)")->capture_default_str();
  app.add_option("--rounds", o.rounds, "timed graph replays; the best counts")->capture_default_str();
  app.add_option("--working-set", working_set_mib, "MiB of weight copies rotated through")->capture_default_str();
  app.add_option("--sweep-shapes", sweep_shapes, "presets whose tensor-core splits are swept (none: no sweep)")
      ->delimiter(',');
  app.add_option("--sweep-tokens", sweep_tokens, "tokens of the sweep")->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  if (sweep_shapes.size() == 1 && sweep_shapes[0] == "none") sweep_shapes.clear();
  llm::parse_dtype(dtype, o.type);
  o.working_set = static_cast<size_t>(working_set_mib) << 20;
  for (int t : token_counts)
    if (t < 1 || t > kMaxTokens) {
      std::printf("gemv_bench: --tokens %d outside 1..%d\n", t, kMaxTokens);
      return 2;
    }

  const llm::cuda::DeviceStatus gpu = llm::cuda::probe_device(0);
  if (!gpu.usable) {
    std::printf("gemv_bench: no usable GPU: %s\n", gpu.reason.c_str());
    return 0;
  }
  LLM_CUDA_CHECK(cudaSetDevice(0));
  cudaStream_t stream;
  LLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t cublas;
  LLM_CUBLAS_CHECK(cublasCreate(&cublas));
  LLM_CUBLAS_CHECK(cublasSetStream(cublas, stream));
  LLM_CUBLAS_CHECK(cublasSetMathMode(cublas, CUBLAS_DEFAULT_MATH));
  DeviceMemory workspace(size_t{32} << 20);  // as LlamaCuda: graph capture without allocation
  LLM_CUBLAS_CHECK(cublasSetWorkspace(cublas, workspace.p, size_t{32} << 20));

  const double bw = copy_bandwidth();
  std::printf("device %s; copy bandwidth %.0f GB/s (read + write); %s weights; %d calls a graph, best of %d\n\n",
              gpu.name.c_str(), bw, dtype.c_str(), o.calls, o.rounds);
  std::printf(
      "us per call, GB/s of weight bytes, %% of the copy bandwidth; plan: warps a block x 16-row tiles a block; "
      "check: relative L2 of the CUDA-core / tensor-core product against cuBLAS's\n\n"
      "| shape | product | rows x cols | MB | tokens | CUDA cores us | GB/s | %% | with the RMSNorm us | GB/s | %% "
      "| the norm prepared us | GB/s | %% | tensor cores us | GB/s | %% | plan | cuBLAS us | GB/s | %% | check |\n"
      "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|\n");
  std::fflush(stdout);
  auto cell = [&](double us, size_t bytes) {
    if (us < 0) return std::string("- | - | -");
    const double gbs = bytes / (us * 1e-6) / 1e9;
    char buf[96];
    std::snprintf(buf, sizeof buf, "%.1f | %.0f | %.0f%%", us, gbs, 100.0 * gbs / bw);
    return std::string(buf);
  };
  auto err_text = [](double e) {
    if (e < 0) return std::string("-");
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1e", e);
    return std::string(buf);
  };
  for (const std::string& shape : shapes) {
    const llm::ModelConfig config = llm::model_preset(shape);
    for (const Product& p : products(config)) {
      Bench bench(p, o, cublas, stream);
      const size_t bytes = bench.weight_bytes();
      for (int tokens : token_counts) {
        const double cc = bench.time_gemv(GemvKernel::CudaCore, tokens);
        const double ccn = bench.time_gemv(GemvKernel::CudaCore, tokens, {}, NormInput::Residual);
        const double ccp = bench.time_gemv(GemvKernel::CudaCore, tokens, {}, NormInput::Prepared);
        const double tc = bench.time_gemv(GemvKernel::TensorCore, tokens);
        const double cb = bench.time_cublas(tokens);
        const GemvTuning plan = llm::cuda::gemv_plan(p.epilogue, bench.args(0, tokens), o.type, GemvKernel::TensorCore);
        const auto [err_cc, err_tc] = bench.check(tokens);
        const std::string dims = (p.epilogue == GemvEpilogue::Swiglu ? "2x" : "") +
                                 std::to_string(p.epilogue == GemvEpilogue::Swiglu ? p.rows[0] : p.weight_rows()) +
                                 "x" + std::to_string(p.cols);
        std::printf("| %s | %s | %s | %.1f | %d | %s | %s | %s | %s | %s | %s | %s / %s |\n", shape.c_str(),
                    p.name.c_str(), dims.c_str(), bytes / 1e6, tokens, cell(cc, bytes).c_str(),
                    cell(ccn, bytes).c_str(), cell(ccp, bytes).c_str(), cell(tc, bytes).c_str(),
                    plan_label(plan).c_str(), cell(cb, bytes).c_str(), err_text(err_cc).c_str(),
                    err_text(err_tc).c_str());
        std::fflush(stdout);
      }
    }
  }

  if (!sweep_shapes.empty()) {
    const int warps[] = {1, 2, 4, 8, 16};
    std::printf(
        "\ntensor-core kernel, us per call by split (warps a block x 16-row tiles a block); * the plan gemv "
        "chooses\n\n| shape | product | tokens |");
    for (int r = 1; r <= 2; ++r)
      for (int w : warps) std::printf(" %dw x %d |", w, r);
    std::printf(" best | plan |\n|---|---|---:|");
    for (int i = 0; i < 10; ++i) std::printf("---:|");
    std::printf("---|---|\n");
    for (const std::string& shape : sweep_shapes) {
      const llm::ModelConfig config = llm::model_preset(shape);
      for (const Product& p : products(config)) {
        Bench bench(p, o, cublas, stream);
        for (int tokens : sweep_tokens) {
          if (tokens < 1 || tokens > kMaxTokens) continue;
          const GemvTuning plan =
              llm::cuda::gemv_plan(p.epilogue, bench.args(0, tokens), o.type, GemvKernel::TensorCore);
          std::printf("| %s | %s | %d |", shape.c_str(), p.name.c_str(), tokens);
          double best = 1e30;
          GemvTuning best_t;
          for (int r = 1; r <= 2; ++r)
            for (int w : warps) {
              if (p.epilogue == GemvEpilogue::Swiglu && r == 2) {  // Swiglu: one tile of W1 and of W3 a block
                std::printf(" - |");
                continue;
              }
              const GemvTuning t{w, r};
              const double us = bench.time_gemv(GemvKernel::TensorCore, tokens, t);
              if (us < best) best = us, best_t = t;
              std::printf(" %.1f%s |", us, t.warps == plan.warps && t.row_tiles == plan.row_tiles ? "*" : "");
            }
          std::printf(" %s | %s |\n", plan_label(best_t).c_str(), plan_label(plan).c_str());
          std::fflush(stdout);
        }
      }
    }
  }
  cublasDestroy(cublas);
  cudaStreamDestroy(stream);
  return 0;
}
