// attention_bench: the CUDA attention plugins (flash_cuda, mha_cuda) on the shapes of the flash_cuda
// issue, timed with CUDA events, bf16. Prints a markdown table; benches/torch_attention_bench.py times
// PyTorch's scaled_dot_product_attention (flash and cuDNN backends) on the same shapes in the same run.
//   prefill: head dim 64 and 128, causal and not, s = 512, 2K, 8K, 16K with b*s = 16K and 2048/d heads
//            (q heads = kv heads); TFLOP/s = 4*b*h*s^2*d / t, halved when causal.
//   decode:  32 query heads over 8 kv heads, d = 128 (--decode-heads), b in {1, 8, 32}, kv length in
//            {1K, 4K, 16K}; TB/s = bytes of K and V read (b * kv * kv heads * d * 2 * 2) / t.
// Inputs are random (never zeros), rotated among enough copies that the working set exceeds the L2
// cache, and each figure is the median of --reps timings of --iters calls after a warm-up.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_device.h"
#include "plugin_loader.h"

namespace {

#define CHECK_CUDA(expr)                                                                                  \
  do {                                                                                                    \
    const cudaError_t e_ = (expr);                                                                        \
    if (e_ != cudaSuccess) {                                                                              \
      std::fprintf(stderr, "%s failed: %s (%s:%d)\n", #expr, cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                                       \
    }                                                                                                     \
  } while (0)

struct Shape {
  bool decode;
  int batch, q_len, kv_len, q_heads, kv_heads, head_dim;
  bool causal;
};

// Fills `n` bf16 values on the device with N(0, 1) draws: pieces of a pool of 32M values drawn once on the
// host, each from a random offset (drawing the gigabytes of a 16K-token KV cache on the host took minutes;
// the kernels' speed depends on the values being random, not on their never repeating).
void fill_random(void* dst, size_t n, std::mt19937& rng) {
  constexpr size_t kPool = size_t{32} << 20;
  static __nv_bfloat16* pool = [] {
    std::mt19937 pool_rng(99);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<__nv_bfloat16> h(kPool);
    for (auto& x : h) x = __float2bfloat16_rn(normal(pool_rng));
    __nv_bfloat16* d = nullptr;
    CHECK_CUDA(cudaMalloc(&d, kPool * sizeof(__nv_bfloat16)));
    CHECK_CUDA(cudaMemcpy(d, h.data(), kPool * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
    return d;
  }();
  std::uniform_int_distribution<size_t> offset(0, kPool / 2);
  auto* out = static_cast<__nv_bfloat16*>(dst);
  for (size_t done = 0; done < n;) {
    const size_t from = offset(rng), count = std::min(n - done, kPool - from);
    CHECK_CUDA(cudaMemcpy(out + done, pool + from, count * sizeof(__nv_bfloat16), cudaMemcpyDeviceToDevice));
    done += count;
  }
}

// One problem instance on the device: q, out, a contiguous KV cache (one slot per sequence) and the
// per-sequence arrays. The cache is token-major within a slot ([position][kv head][d], the runtime's
// layout) or, with head_major, [kv head][position][d] (PyTorch's [batch, heads, length, d]): a kv head's
// keys are then one run of memory rather than head_dim-sized pieces a token apart.
struct Instance {
  void *q = nullptr, *out = nullptr, *k = nullptr, *v = nullptr;
  int32_t *q_start = nullptr, *kv_len = nullptr, *slot = nullptr;
  llm_kv_cache_view view{};
  size_t bytes = 0;

  Instance(const Shape& s, bool head_major, std::mt19937& rng) {
    const size_t tokens = static_cast<size_t>(s.batch) * s.q_len;
    const size_t q_elems = tokens * s.q_heads * s.head_dim;
    const size_t kv_elems = static_cast<size_t>(s.batch) * s.kv_len * s.kv_heads * s.head_dim;
    CHECK_CUDA(cudaMalloc(&q, q_elems * 2));
    CHECK_CUDA(cudaMalloc(&out, q_elems * 2));
    CHECK_CUDA(cudaMalloc(&k, kv_elems * 2));
    CHECK_CUDA(cudaMalloc(&v, kv_elems * 2));
    bytes = (2 * q_elems + 2 * kv_elems) * 2;
    fill_random(q, q_elems, rng);
    fill_random(k, kv_elems, rng);
    fill_random(v, kv_elems, rng);
    std::vector<int32_t> qs(s.batch + 1), kl(s.batch, s.kv_len), sl(s.batch);
    for (int i = 0; i <= s.batch; ++i) qs[i] = i * s.q_len;
    for (int i = 0; i < s.batch; ++i) sl[i] = i;
    CHECK_CUDA(cudaMalloc(&q_start, qs.size() * 4));
    CHECK_CUDA(cudaMalloc(&kv_len, kl.size() * 4));
    CHECK_CUDA(cudaMalloc(&slot, sl.size() * 4));
    CHECK_CUDA(cudaMemcpy(q_start, qs.data(), qs.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(kv_len, kl.data(), kl.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(slot, sl.data(), sl.size() * 4, cudaMemcpyHostToDevice));
    view.struct_size = sizeof(view);
    view.layout = LLM_KV_LAYOUT_CONTIGUOUS;
    view.dtype = LLM_DTYPE_BF16;
    view.device_kind = LLM_DEVICE_CUDA;
    view.k = k;
    view.v = v;
    view.token_stride = head_major ? s.head_dim : static_cast<int64_t>(s.kv_heads) * s.head_dim;
    view.head_stride = head_major ? static_cast<int64_t>(s.kv_len) * s.head_dim : s.head_dim;
    view.seq_stride = static_cast<int64_t>(s.kv_len) * s.kv_heads * s.head_dim;
  }
  ~Instance() {
    for (void* p : {q, out, k, v, static_cast<void*>(q_start), static_cast<void*>(kv_len), static_cast<void*>(slot)})
      cudaFree(p);
  }
  Instance(const Instance&) = delete;
  Instance& operator=(const Instance&) = delete;

  llm_attention_args args(const Shape& s, cudaStream_t stream) const {
    llm_attention_args a{};
    a.struct_size = sizeof(a);
    a.num_seqs = s.batch;
    a.total_q_tokens = s.batch * s.q_len;
    a.max_q_len = s.q_len;
    a.max_kv_len = s.kv_len;
    a.causal = s.causal;
    a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
    a.dtype = LLM_DTYPE_BF16;
    a.q = q;
    a.q_token_stride = static_cast<int64_t>(s.q_heads) * s.head_dim;
    a.q_head_stride = s.head_dim;
    a.out = out;
    a.out_token_stride = a.q_token_stride;
    a.out_head_stride = s.head_dim;
    a.q_start = q_start;
    a.kv_len = kv_len;
    a.seq_slot = slot;
    a.kv = &view;
    a.stream = stream;
    return a;
  }
};

// Median milliseconds per call of `plugin` on `s`, or a negative value with `why` set.
double time_plugin(const llm::Plugin& plugin, const llm_device_info& device, const Shape& s, bool head_major, int iters,
                   int reps, std::string* why) {
  const auto& t = plugin.iface();
  llm_attention_shape shape{};
  shape.struct_size = sizeof(shape);
  shape.head_dim = s.head_dim;
  shape.num_q_heads = s.q_heads;
  shape.num_kv_heads = s.kv_heads;
  shape.dtype = LLM_DTYPE_BF16;
  shape.max_context = s.kv_len;
  shape.max_batch = s.batch;
  shape.kv_layout = LLM_KV_LAYOUT_CONTIGUOUS;
  llm_probe_result verdict{};
  verdict.struct_size = sizeof(verdict);
  if (t.probe(&device, &shape, &verdict) != LLM_OK || !verdict.supported) {
    *why = verdict.reason;
    return -1;
  }
  llm_backend_context* ctx = nullptr;
  if (t.context_create(&device, &shape, &ctx) != LLM_OK) {
    *why = t.last_error(nullptr);
    return -1;
  }
  std::mt19937 rng(1234);
  // Enough copies that one pass over them does not fit in the 50 MB L2 (at most 8).
  std::vector<std::unique_ptr<Instance>> sets;
  do sets.push_back(std::make_unique<Instance>(s, head_major, rng));
  while (sets.size() < 8 && sets.size() * sets[0]->bytes < (256u << 20));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<llm_attention_args> args;
  for (auto& in : sets) args.push_back(in->args(s, stream));
  auto call = [&](size_t i) {
    const llm_attention_args& a = args[i % args.size()];
    return s.decode ? t.decode(ctx, &a) : t.prefill(ctx, &a);
  };
  double result = -1;
  for (int w = 0; w < 3; ++w)
    if (call(w) != LLM_OK) {
      *why = t.last_error(ctx);
      t.context_destroy(ctx);
      CHECK_CUDA(cudaStreamDestroy(stream));
      return -1;
    }
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    CHECK_CUDA(cudaEventRecord(a, stream));
    for (int i = 0; i < iters; ++i) call(i);
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float e = 0;
    CHECK_CUDA(cudaEventElapsedTime(&e, a, b));
    ms.push_back(e / iters);
  }
  CHECK_CUDA(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  result = ms[ms.size() / 2];
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  CHECK_CUDA(cudaStreamDestroy(stream));
  t.context_destroy(ctx);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"attention_bench: flash_cuda and mha_cuda on the flash_cuda issue's shapes"};
  // mha_cuda (the safety net, one warp per query row) takes seconds a call at 16K: named on request only.
  std::vector<std::string> backends = {"flash_cuda"};
  std::string plugin_dir = LLM_PLUGIN_DIR;
  std::string what = "all";
  int reps = 7;
  std::string kv_layout = "token_major";
  app.add_option("--backends", backends, "plugins to time")->delimiter(',');
  app.add_option("--plugin-dir", plugin_dir, "where the plugins are")->capture_default_str();
  app.add_option("--what", what, "prefill, decode or all")->capture_default_str();
  app.add_option("--reps", reps, "timings per figure (median)")->capture_default_str();
  app.add_option("--kv-layout", kv_layout,
                 "the KV cache within a slot: token_major ([position][kv head][d], the runtime's) or head_major "
                 "([kv head][position][d], PyTorch's)")
      ->check(CLI::IsMember({"token_major", "head_major"}))
      ->capture_default_str();
  std::vector<int> dims{64, 128}, lens{512, 2048, 8192, 16384};
  app.add_option("--dims", dims, "prefill head dims")->delimiter(',')->capture_default_str();
  app.add_option("--lens", lens, "prefill sequence lengths (batch * length = 16K)")
      ->delimiter(',')
      ->capture_default_str();
  std::vector<int> batches{1, 8, 32}, kv_lens{1024, 4096, 16384};
  app.add_option("--batches", batches, "decode batch sizes")->delimiter(',')->capture_default_str();
  app.add_option("--kv-lens", kv_lens, "decode kv lengths")->delimiter(',')->capture_default_str();
  // q heads / kv heads / head dim; e.g. 32/32/128 is Llama-2-7B's attention, 32/4/64 TinyLlama's.
  std::vector<std::string> decode_heads{"32/8/128"};
  app.add_option("--decode-heads", decode_heads, "decode q heads/kv heads/head dim")
      ->delimiter(',')
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  struct Heads {
    int q, kv, d;
  };
  std::vector<Heads> heads;  // --decode-heads, checked before the GPU is looked for
  for (const std::string& h : decode_heads) {
    Heads x{0, 0, 0};
    if (std::sscanf(h.c_str(), "%d/%d/%d", &x.q, &x.kv, &x.d) != 3 || x.q < 1 || x.kv < 1 || x.q % x.kv != 0 ||
        x.d < 8) {
      std::fprintf(stderr, "attention_bench: --decode-heads %s: expected q/kv/d, q a multiple of kv and d at least 8\n",
                   h.c_str());
      return 2;
    }
    heads.push_back(x);
  }

  const llm::cuda::DeviceStatus status = llm::cuda::probe_device(0);
  if (!status.usable) {
    std::fprintf(stderr, "attention_bench: no usable GPU: %s\n", status.reason.c_str());
    return 1;
  }
  const llm_device_info device = llm::cuda::device_info(status);
  std::vector<std::shared_ptr<llm::Plugin>> plugins;
  for (const auto& c : llm::load_plugins({plugin_dir}))
    if (c.plugin && std::find(backends.begin(), backends.end(), c.plugin->name()) != backends.end())
      plugins.push_back(c.plugin);

  std::vector<Shape> shapes;
  if (what == "prefill" || what == "all")
    for (int d : dims)
      for (bool causal : {false, true})
        for (int s : lens) shapes.push_back({false, 16384 / s, s, s, 2048 / d, 2048 / d, d, causal});
  if (what == "decode" || what == "all")
    for (const Heads& h : heads)
      for (int b : batches)
        for (int kv : kv_lens) shapes.push_back({true, b, 1, kv, h.q, h.kv, h.d, true});

  const bool head_major = kv_layout == "head_major";
  std::printf("## attention_bench (%s, bf16, KV cache %s)\n\n", status.name.c_str(), kv_layout.c_str());
  std::printf("| call | d | causal | batch | q len | kv len | heads q/kv |");
  for (const auto& p : plugins) std::printf(" %s |", p->name().c_str());
  std::printf(" unit |\n|---|---:|---|---:|---:|---:|---|");
  for (size_t i = 0; i < plugins.size(); ++i) std::printf("---:|");
  std::printf("---|\n");
  for (const Shape& s : shapes) {
    std::printf("| %s | %d | %s | %d | %d | %d | %d/%d |", s.decode ? "decode" : "prefill", s.head_dim,
                s.causal ? "yes" : "no", s.batch, s.q_len, s.kv_len, s.q_heads, s.kv_heads);
    for (const auto& p : plugins) {
      std::string why;
      const int iters =
          s.decode ? 200 : std::max(3, static_cast<int>(2e4 / (s.kv_len / 512.0 * s.kv_len / 512.0 * 16)));
      const double ms = time_plugin(*p, device, s, head_major, iters, reps, &why);
      if (ms < 0) {
        std::printf(" n/a |");
        std::fprintf(stderr, "%s: %s\n", p->name().c_str(), why.c_str());
        continue;
      }
      double figure;
      if (s.decode) {
        figure = static_cast<double>(s.batch) * s.kv_len * s.kv_heads * s.head_dim * 2 * 2 / (ms * 1e-3) / 1e12;
      } else {
        figure = 4.0 * s.batch * s.q_heads * static_cast<double>(s.q_len) * s.kv_len * s.head_dim / (ms * 1e-3) / 1e12;
        if (s.causal) figure /= 2;
      }
      std::printf(" %.3f (%.3f ms) |", figure, ms);
    }
    std::printf(" %s |\n", s.decode ? "TB/s of K+V" : "TFLOP/s");
    std::fflush(stdout);
  }
  return 0;
}
