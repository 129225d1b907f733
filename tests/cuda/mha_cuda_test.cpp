// mha_cuda.so, loaded as a plugin, against a float64 reference on fresh random inputs: fp32, fp16 and
// bf16, head dims, GQA ratios, odd lengths, cached prefixes, batches of different lengths in shuffled
// cache slots, contiguous and paged (shuffled block table) caches, causal and not, long contexts, decode
// in a CUDA graph. Inputs are rounded to the dtype first and the reference computes from the rounded
// values. Outputs are poisoned with NaN first, so an unwritten element fails; NaN never passes.
// The GPU tests skip where no usable GPU is present; the probe's refusals are checked everywhere.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_test_support.h"
#include "engine.h"
#include "plugin_loader.h"

namespace llm {
namespace {

#define MHA_CUDA_CHECK(expr)                                                                        \
  do {                                                                                              \
    const cudaError_t mha_status_ = (expr);                                                         \
    if (mha_status_ != cudaSuccess)                                                                 \
      throw std::runtime_error(std::string(#expr) + " failed: " + cudaGetErrorString(mha_status_)); \
  } while (0)

// ---- device memory and streams, RAII ----

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) { MHA_CUDA_CHECK(cudaMalloc(&ptr_, std::max<size_t>(bytes, 1))); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  // Uploads and poisoning go through the legacy default stream, which does not order work on the tests'
  // non-blocking streams: wait for them to finish.
  void upload(const void* src, size_t bytes) {
    MHA_CUDA_CHECK(cudaMemcpy(ptr_, src, bytes, cudaMemcpyHostToDevice));
    MHA_CUDA_CHECK(cudaDeviceSynchronize());
  }
  template <typename T>
  void upload(const std::vector<T>& v) {
    upload(v.data(), v.size() * sizeof(T));
  }
  std::vector<uint8_t> download() const {
    std::vector<uint8_t> bytes(bytes_);
    MHA_CUDA_CHECK(cudaMemcpy(bytes.data(), ptr_, bytes_, cudaMemcpyDeviceToHost));
    return bytes;
  }
  void poison() {  // all-ones: NaN in fp32, fp16 and bf16
    MHA_CUDA_CHECK(cudaMemset(ptr_, 0xff, bytes_));
    MHA_CUDA_CHECK(cudaDeviceSynchronize());
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_;
};

class Stream {
 public:
  Stream() { MHA_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void sync() const {
    MHA_CUDA_CHECK(cudaStreamSynchronize(s_));
    MHA_CUDA_CHECK(cudaGetLastError());
  }

 private:
  cudaStream_t s_ = nullptr;
};

// ---- dtypes on the host ----

size_t dtype_size(int dtype) { return dtype == LLM_DTYPE_F32 ? 4 : 2; }
const char* dtype_name(int dtype) { return dtype == LLM_DTYPE_F32 ? "fp32" : dtype == LLM_DTYPE_F16 ? "fp16" : "bf16"; }

void store(int dtype, float x, uint8_t* dst) {
  if (dtype == LLM_DTYPE_F32) {
    std::memcpy(dst, &x, 4);
  } else if (dtype == LLM_DTYPE_F16) {
    const __half h = __float2half_rn(x);
    std::memcpy(dst, &h, 2);
  } else {
    const __nv_bfloat16 b = __float2bfloat16_rn(x);
    std::memcpy(dst, &b, 2);
  }
}

float load(int dtype, const uint8_t* src) {
  if (dtype == LLM_DTYPE_F32) {
    float x;
    std::memcpy(&x, src, 4);
    return x;
  }
  if (dtype == LLM_DTYPE_F16) {
    __half h;
    std::memcpy(&h, src, 2);
    return __half2float(h);
  }
  __nv_bfloat16 b;
  std::memcpy(&b, src, 2);
  return __bfloat162float(b);
}

// Random N(0, 1) values rounded to `dtype`: `values` for the reference, `bytes` for the device.
struct HostTensor {
  std::vector<float> values;
  std::vector<uint8_t> bytes;
};

HostTensor random_tensor(size_t n, int dtype, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  HostTensor t;
  t.values.resize(n);
  t.bytes.resize(n * dtype_size(dtype));
  for (size_t i = 0; i < n; ++i) {
    store(dtype, normal(rng), &t.bytes[i * dtype_size(dtype)]);
    t.values[i] = load(dtype, &t.bytes[i * dtype_size(dtype)]);
  }
  return t;
}

// ---- the plugin ----

std::shared_ptr<Plugin> load_mha_cuda() {
  static const std::vector<PluginCandidate> candidates = load_plugins({LLM_PLUGIN_DIR});
  for (const auto& c : candidates)
    if (c.plugin && c.plugin->name() == "mha_cuda") return c.plugin;
  return nullptr;
}

llm_device_info gpu_info() {
  static const cuda::DeviceStatus status = cuda::probe_device(0);
  return cuda::device_info(status);
}

// ---- one attention call against the float64 reference ----

struct Case {
  int head_dim, q_heads, kv_heads;
  std::vector<int> q_lens, kv_lens;  // per sequence
  bool causal = true;
  bool paged = false;
  int dtype = LLM_DTYPE_F32;
  int block = 16;             // positions per block (paged)
  int pad = 0;                // extra elements per query token in q and out (strided, padding stays poison)
  bool loose_bounds = false;  // max_q_len / max_kv_len as a graph-captured call passes them (session maxima)
  int extra_slots = 2;        // cache slots beyond the batch's (0 keeps long-context caches small)
};

std::string describe(const Case& tc, bool decode) {
  std::string lens;
  for (size_t i = 0; i < tc.q_lens.size(); ++i)
    lens += (i ? "," : "") + std::to_string(tc.q_lens[i]) + "/" + std::to_string(tc.kv_lens[i]);
  return std::string(decode ? "decode" : "prefill") + " " + dtype_name(tc.dtype) + " d=" + std::to_string(tc.head_dim) +
         " heads=" + std::to_string(tc.q_heads) + "/" + std::to_string(tc.kv_heads) +
         (tc.paged ? " paged" : " contig") + (tc.causal ? "" : " non-causal") + " q/kv=" + lens;
}

double tolerance(int dtype) { return dtype == LLM_DTYPE_F32 ? 1e-5 : 1e-2; }

// Everything a call needs, on the device, and what the reference needs, on the host.
class Problem {
 public:
  Problem(const Case& tc, std::mt19937& rng) : tc_(tc) {
    seqs_ = static_cast<int>(tc.q_lens.size());
    max_ctx_ = *std::max_element(tc.kv_lens.begin(), tc.kv_lens.end()) + 3;
    kv_dim_ = tc.kv_heads * tc.head_dim;
    q_dim_ = tc.q_heads * tc.head_dim + tc.pad;
    slots_ = seqs_ + tc.extra_slots;  // more slots than sequences, so slot ids are not just the batch index
    blocks_per_seq_ = (max_ctx_ + tc.block - 1) / tc.block;
    const size_t cache_elems = static_cast<size_t>(slots_) * blocks_per_seq_ * tc.block * kv_dim_;
    k_ = random_tensor(cache_elems, tc.dtype, rng);
    v_ = random_tensor(cache_elems, tc.dtype, rng);
    table_.resize(static_cast<size_t>(slots_) * blocks_per_seq_);
    std::iota(table_.begin(), table_.end(), 0);
    std::shuffle(table_.begin(), table_.end(), rng);
    std::vector<int32_t> slot_order(slots_);
    std::iota(slot_order.begin(), slot_order.end(), 0);
    std::shuffle(slot_order.begin(), slot_order.end(), rng);
    q_start_ = {0};
    for (int i = 0; i < seqs_; ++i) {
      q_start_.push_back(q_start_.back() + tc.q_lens[i]);
      slot_.push_back(slot_order[i]);
    }
    kv_len_.assign(tc.kv_lens.begin(), tc.kv_lens.end());
    total_ = q_start_.back();
    q_ = random_tensor(static_cast<size_t>(total_) * q_dim_, tc.dtype, rng);

    d_k_ = std::make_unique<DeviceBuffer>(k_.bytes.size());
    d_v_ = std::make_unique<DeviceBuffer>(v_.bytes.size());
    d_q_ = std::make_unique<DeviceBuffer>(q_.bytes.size());
    d_out_ = std::make_unique<DeviceBuffer>(q_.bytes.size());
    d_table_ = std::make_unique<DeviceBuffer>(table_.size() * 4);
    d_q_start_ = std::make_unique<DeviceBuffer>(q_start_.size() * 4);
    d_kv_len_ = std::make_unique<DeviceBuffer>(kv_len_.size() * 4);
    d_slot_ = std::make_unique<DeviceBuffer>(slot_.size() * 4);
    d_k_->upload(k_.bytes);
    d_v_->upload(v_.bytes);
    d_q_->upload(q_.bytes);
    d_table_->upload(table_);
    d_q_start_->upload(q_start_);
    d_kv_len_->upload(kv_len_);
    d_slot_->upload(slot_);

    view_ = llm_kv_cache_view{};
    view_.struct_size = sizeof(view_);
    view_.layout = tc.paged ? LLM_KV_LAYOUT_PAGED : LLM_KV_LAYOUT_CONTIGUOUS;
    view_.dtype = tc.dtype;
    view_.device_kind = LLM_DEVICE_CUDA;
    view_.k = d_k_->as<void>();
    view_.v = d_v_->as<void>();
    view_.seq_stride = static_cast<int64_t>(blocks_per_seq_) * tc.block * kv_dim_;
    view_.token_stride = kv_dim_;
    view_.head_stride = tc.head_dim;
    if (tc.paged) {
      view_.block_size = tc.block;
      view_.max_blocks_per_seq = blocks_per_seq_;
      view_.block_stride = static_cast<int64_t>(tc.block) * kv_dim_;
      view_.block_table = d_table_->as<int32_t>();
    }
  }

  llm_attention_shape shape() const {
    llm_attention_shape s{};
    s.struct_size = sizeof(s);
    s.head_dim = tc_.head_dim;
    s.num_q_heads = tc_.q_heads;
    s.num_kv_heads = tc_.kv_heads;
    s.dtype = tc_.dtype;
    s.max_context = max_ctx_;
    s.max_batch = seqs_ + 1;
    s.kv_layout = view_.layout;
    s.kv_block_size = tc_.paged ? tc_.block : 0;
    return s;
  }

  llm_attention_args args(cudaStream_t stream) const {
    llm_attention_args a{};
    a.struct_size = sizeof(a);
    a.num_seqs = seqs_;
    a.total_q_tokens = total_;
    a.max_q_len = *std::max_element(tc_.q_lens.begin(), tc_.q_lens.end());
    a.max_kv_len = *std::max_element(kv_len_.begin(), kv_len_.end());
    if (tc_.loose_bounds && a.max_q_len > 1) a.max_q_len += 5;
    if (tc_.loose_bounds) a.max_kv_len = max_ctx_;
    a.causal = tc_.causal;
    a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(tc_.head_dim));
    a.dtype = tc_.dtype;
    a.q = d_q_->as<void>();
    a.q_token_stride = q_dim_;
    a.q_head_stride = tc_.head_dim;
    a.out = d_out_->as<void>();
    a.out_token_stride = q_dim_;
    a.out_head_stride = tc_.head_dim;
    a.q_start = d_q_start_->as<int32_t>();
    a.kv_len = d_kv_len_->as<int32_t>();
    a.seq_slot = d_slot_->as<int32_t>();
    a.kv = &view_;
    a.stream = stream;
    return a;
  }

  DeviceBuffer& out() { return *d_out_; }

  // New context lengths for the same queries (a later decode step); uploads them.
  void set_kv_lens(const std::vector<int32_t>& lens) {
    kv_len_ = lens;
    d_kv_len_->upload(kv_len_);
  }

  // Relative L2 error of the downloaded output against float64; INFINITY when an element is not finite
  // (poison left or NaN computed) or when the padding between tokens was written.
  double error(const std::vector<uint8_t>& out, std::string* where) const {
    const size_t es = dtype_size(tc_.dtype);
    const int group = tc_.q_heads / tc_.kv_heads, d = tc_.head_dim;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    double err2 = 0, ref2 = 0;
    std::vector<double> w;
    for (int i = 0; i < seqs_; ++i) {
      const int q_len = q_start_[i + 1] - q_start_[i];
      for (int j = 0; j < q_len; ++j) {
        const int token = q_start_[i] + j, pos = kv_len_[i] - q_len + j;
        const int n = tc_.causal ? pos + 1 : kv_len_[i];
        for (int h = 0; h < tc_.q_heads; ++h) {
          const float* qv = &q_.values[static_cast<size_t>(token) * q_dim_ + h * d];
          w.assign(n, 0.0);
          double mx = -INFINITY, sum = 0;
          for (int p = 0; p < n; ++p) {
            const float* kp = &k_.values[offset(i, p, h / group)];
            double dot = 0;
            for (int c = 0; c < d; ++c) dot += static_cast<double>(qv[c]) * kp[c];
            w[p] = dot * scale;
            mx = std::max(mx, w[p]);
          }
          for (auto& x : w) sum += (x = std::exp(x - mx));
          for (int c = 0; c < d; ++c) {
            double ref = 0;
            for (int p = 0; p < n; ++p) ref += w[p] * v_.values[offset(i, p, h / group) + c];
            ref /= sum;
            const double got = load(tc_.dtype, &out[(static_cast<size_t>(token) * q_dim_ + h * d + c) * es]);
            if (!std::isfinite(got)) {
              *where = "non-finite output at token " + std::to_string(token) + " head " + std::to_string(h) +
                       " component " + std::to_string(c);
              return INFINITY;
            }
            err2 += (got - ref) * (got - ref);
            ref2 += ref * ref;
          }
        }
      }
    }
    for (int t = 0; t < total_; ++t)
      for (int c = tc_.q_heads * d; c < q_dim_; ++c)
        if (!std::isnan(load(tc_.dtype, &out[(static_cast<size_t>(t) * q_dim_ + c) * es]))) {
          *where = "padding after token " + std::to_string(t) + " was written";
          return INFINITY;
        }
    return ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  }

 private:
  size_t offset(int seq, int pos, int kv_head) const {
    llm_kv_cache_view host = view_;
    host.block_table = table_.data();
    return static_cast<size_t>(llm_kv_offset(&host, slot_[seq], pos, kv_head));
  }

  Case tc_;
  int seqs_, max_ctx_, kv_dim_, q_dim_, slots_, blocks_per_seq_, total_;
  HostTensor k_, v_, q_;
  std::vector<int32_t> table_, q_start_, kv_len_, slot_;
  std::unique_ptr<DeviceBuffer> d_k_, d_v_, d_q_, d_out_, d_table_, d_q_start_, d_kv_len_, d_slot_;
  llm_kv_cache_view view_{};
};

// A context on the GPU for `shape`, destroyed with the guard.
class Context {
 public:
  Context(const Plugin& plugin, const llm_attention_shape& shape) : t_(plugin.iface()) {
    const llm_device_info device = gpu_info();
    status_ = t_.context_create(&device, &shape, &ctx_);
  }
  ~Context() { t_.context_destroy(ctx_); }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  llm_status status() const { return status_; }
  llm_backend_context* get() const { return ctx_; }
  const char* error() const { return t_.last_error(ctx_); }
  llm_status call(const llm_attention_args& a, bool decode) const {
    return decode ? t_.decode(ctx_, &a) : t_.prefill(ctx_, &a);
  }

 private:
  const llm_backend_iface& t_;
  llm_backend_context* ctx_ = nullptr;
  llm_status status_;
};

// Measured errors, printed as a table (rows in first-seen order) at the end of each test.
class ErrorTable {
 public:
  void add(const std::string& row, double err) {
    auto it = std::find_if(rows_.begin(), rows_.end(), [&](const Row& r) { return r.name == row; });
    if (it == rows_.end()) it = rows_.insert(rows_.end(), Row{row, 0.0, 0});
    it->max_err = std::max(it->max_err, err);
    ++it->runs;
  }
  void print(const char* title) const {
    std::printf("\n%s: relative L2 error ||out - ref|| / ||ref|| (max over runs)\n", title);
    std::printf("  %-72s %6s %12s\n", "case", "runs", "max rel err");
    for (const Row& r : rows_) std::printf("  %-72s %6d %12.3e\n", r.name.c_str(), r.runs, r.max_err);
    std::fflush(stdout);
  }

 private:
  struct Row {
    std::string name;
    double max_err;
    int runs;
  };
  std::vector<Row> rows_;
};

// Runs one case, checks it against the reference and returns the error.
double run_case(const Plugin& plugin, const Case& tc, std::mt19937& rng, bool decode) {
  Problem problem(tc, rng);
  Context ctx(plugin, problem.shape());
  EXPECT_EQ(ctx.status(), LLM_OK) << plugin.iface().last_error(nullptr);
  if (ctx.status() != LLM_OK) return INFINITY;
  Stream stream;
  problem.out().poison();
  const llm_status s = ctx.call(problem.args(stream.get()), decode);
  EXPECT_EQ(s, LLM_OK) << ctx.error();
  if (s != LLM_OK) return INFINITY;
  stream.sync();
  std::string where;
  const double err = problem.error(problem.out().download(), &where);
  EXPECT_LT(err, tolerance(tc.dtype)) << describe(tc, decode) << " " << where;
  return err;
}

unsigned fresh_seed() {
  const unsigned seed = std::random_device{}();
  std::printf("random seed %u\n", seed);
  return seed;
}

constexpr int kDtypes[] = {LLM_DTYPE_F32, LLM_DTYPE_BF16, LLM_DTYPE_F16};

TEST(MhaCuda, MatchesFloat64ReferenceOverShapeGrid) {
  LLM_REQUIRE_GPU();
  auto plugin = load_mha_cuda();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  ErrorTable table;
  for (int dtype : kDtypes)
    for (int head_dim : {32, 40, 64, 72, 80, 96, 128, 256})
      for (int ratio : {1, 2, 4, 8})
        for (bool paged : {false, true}) {
          const int kv_heads = 2, q_heads = kv_heads * ratio;
          // prefill: a fresh prompt, a chunk after a long cached prefix (split keys), a one-token chunk and a
          // sequence with no queries, batched
          Case prefill{head_dim, q_heads, kv_heads, {37, 5, 1, 0}, {37, 700, 19, 3}};
          prefill.paged = paged, prefill.dtype = dtype, prefill.block = ratio == 2 ? 7 : 16;
          table.add(std::string(dtype_name(dtype)) + " prefill d=" + std::to_string(head_dim),
                    run_case(*plugin, prefill, rng, false));
          Case decode{head_dim, q_heads, kv_heads, {1, 1, 1, 1}, {1, 17, 300, 1029}};
          decode.paged = paged, decode.dtype = dtype;
          table.add(std::string(dtype_name(dtype)) + " decode  d=" + std::to_string(head_dim),
                    run_case(*plugin, decode, rng, true));
        }
  table.print("shape grid (GQA 1/2/4/8, contiguous and paged, causal)");
}

TEST(MhaCuda, NonCausalStridedAndLooseBounds) {
  LLM_REQUIRE_GPU();
  auto plugin = load_mha_cuda();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  ErrorTable table;
  for (int dtype : kDtypes)
    for (bool paged : {false, true}) {
      const std::string tag = std::string(dtype_name(dtype)) + (paged ? " paged " : " contig ");
      Case nc{64, 8, 8, {33, 7}, {33, 40}};
      nc.causal = false, nc.paged = paged, nc.dtype = dtype;
      table.add(tag + "prefill non-causal d=64 8/8", run_case(*plugin, nc, rng, false));
      Case nc2{100, 12, 4, {5, 300}, {600, 300}};
      nc2.causal = false, nc2.paged = paged, nc2.dtype = dtype;
      table.add(tag + "prefill non-causal d=100 12/4", run_case(*plugin, nc2, rng, false));
      Case strided{96, 6, 2, {9, 1, 4}, {20, 2, 4}};
      strided.pad = 24, strided.paged = paged, strided.dtype = dtype;
      table.add(tag + "prefill strided q/out d=96 6/2", run_case(*plugin, strided, rng, false));
      Case loose{128, 16, 2, {1, 1, 1}, {5, 900, 64}};
      loose.loose_bounds = true, loose.paged = paged, loose.dtype = dtype;
      table.add(tag + "decode loose max_q/max_kv d=128 16/2", run_case(*plugin, loose, rng, true));
      Case loose_prefill{1, 3, 1, {3, 20}, {3, 300}};  // head_dim 1, too
      loose_prefill.loose_bounds = true, loose_prefill.paged = paged, loose_prefill.dtype = dtype;
      table.add(tag + "prefill loose max_q/max_kv d=1 3/1", run_case(*plugin, loose_prefill, rng, false));
    }
  table.print("non-causal, strided, loose bounds");
}

TEST(MhaCuda, LongContexts) {
  LLM_REQUIRE_GPU();
  auto plugin = load_mha_cuda();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  ErrorTable table;
  for (int dtype : kDtypes) {
    const std::string tag = dtype_name(dtype);
    Case d4k{128, 32, 8, {1}, {4099}};
    d4k.dtype = dtype, d4k.extra_slots = 0;
    table.add(tag + " decode 4K d=128 32/8", run_case(*plugin, d4k, rng, true));
    Case d16k{128, 8, 1, {1, 1}, {16384, 9001}};
    d16k.dtype = dtype, d16k.paged = true, d16k.extra_slots = 0;
    table.add(tag + " decode 16K+9K paged d=128 8/1", run_case(*plugin, d16k, rng, true));
    Case d16k_256{256, 8, 2, {1}, {16500}};
    d16k_256.dtype = dtype, d16k_256.extra_slots = 0;
    table.add(tag + " decode 16.5K d=256 8/2", run_case(*plugin, d16k_256, rng, true));
    Case chunk{64, 8, 2, {67}, {8192}};  // a prefill chunk after an 8K prefix
    chunk.dtype = dtype, chunk.paged = true, chunk.extra_slots = 1;
    table.add(tag + " prefill 67 after 8K paged d=64 8/2", run_case(*plugin, chunk, rng, false));
    Case prompt{128, 4, 4, {1500}, {1500}};  // a long fresh prompt
    prompt.dtype = dtype, prompt.extra_slots = 1;
    table.add(tag + " prefill 1500 d=128 4/4", run_case(*plugin, prompt, rng, false));
  }
  table.print("long contexts");
}

TEST(MhaCuda, DecodeIsCapturableInACudaGraphAndDeterministic) {
  LLM_REQUIRE_GPU();
  auto plugin = load_mha_cuda();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  for (int dtype : {LLM_DTYPE_F32, LLM_DTYPE_BF16}) {
    Case tc{128, 16, 4, {1, 1, 1}, {700, 33, 2000}};
    tc.dtype = dtype, tc.paged = true, tc.loose_bounds = true;
    Problem problem(tc, rng);
    Context ctx(*plugin, problem.shape());
    ASSERT_EQ(ctx.status(), LLM_OK) << plugin->iface().last_error(nullptr);
    Stream stream;
    const llm_attention_args a = problem.args(stream.get());

    // Direct calls, twice: bitwise the same.
    problem.out().poison();
    ASSERT_EQ(ctx.call(a, true), LLM_OK) << ctx.error();
    stream.sync();
    const std::vector<uint8_t> direct = problem.out().download();
    problem.out().poison();
    ASSERT_EQ(ctx.call(a, true), LLM_OK) << ctx.error();
    stream.sync();
    EXPECT_EQ(problem.out().download(), direct) << "two direct calls differ";
    std::string where;
    EXPECT_LT(problem.error(direct, &where), tolerance(dtype)) << where;

    // Captured: no host synchronisation or allocation inside the call, or capture fails.
    cudaGraph_t graph = nullptr;
    ASSERT_EQ(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal), cudaSuccess);
    const llm_status captured = ctx.call(a, true);
    const cudaError_t end = cudaStreamEndCapture(stream.get(), &graph);
    ASSERT_EQ(captured, LLM_OK) << ctx.error();
    ASSERT_EQ(end, cudaSuccess) << cudaGetErrorString(end);
    cudaGraphExec_t exec = nullptr;
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    problem.out().poison();
    ASSERT_EQ(cudaGraphLaunch(exec, stream.get()), cudaSuccess);
    stream.sync();
    EXPECT_EQ(problem.out().download(), direct) << "the graph's output differs from the direct call's";

    // Replay reads fresh device arrays: the next decode step (longer contexts) through the same graph
    // equals a direct call on the same data.
    problem.set_kv_lens({701, 34, 2001});
    problem.out().poison();
    ASSERT_EQ(cudaGraphLaunch(exec, stream.get()), cudaSuccess);
    stream.sync();
    const std::vector<uint8_t> replayed = problem.out().download();
    EXPECT_LT(problem.error(replayed, &where), tolerance(dtype)) << where;
    problem.out().poison();
    ASSERT_EQ(ctx.call(a, true), LLM_OK) << ctx.error();
    stream.sync();
    EXPECT_EQ(problem.out().download(), replayed) << "replay with new lengths differs from a direct call";
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
}

TEST(MhaCuda, ProbeRefusesWithReasons) {  // no GPU needed: the probe reads only the device info
  auto plugin = load_mha_cuda();
  ASSERT_NE(plugin, nullptr);
  const auto& t = plugin->iface();
  EXPECT_EQ(t.device_kind, LLM_DEVICE_CUDA);
  EXPECT_EQ(t.priority, 20);
  EXPECT_STREQ(t.version, "1.0.0");
  llm_attention_shape shape{sizeof(llm_attention_shape), 128, 32, 8, LLM_DTYPE_BF16, 4096, 8, 0, 0};
  llm_device_info gpu{};
  gpu.struct_size = sizeof(gpu);
  gpu.kind = LLM_DEVICE_CUDA;
  gpu.compute_major = 9;
  gpu.num_threads = 1;
  gpu.name = "fake H100";
  auto verdict = [&](const llm_device_info& d, const llm_attention_shape& s) {
    llm_probe_result r{};
    r.struct_size = sizeof(r);
    EXPECT_EQ(t.probe(&d, &s, &r), LLM_OK);
    return r;
  };
  llm_probe_result r = verdict(gpu, shape);
  EXPECT_TRUE(r.supported) << r.reason;
  EXPECT_EQ(r.capabilities,
            LLM_CAP_PREFILL | LLM_CAP_DECODE | LLM_CAP_PAGED_KV | LLM_CAP_CUDA_GRAPH_SAFE | LLM_CAP_DETERMINISTIC);

  llm_attention_shape big = shape;
  big.head_dim = 512;
  r = verdict(gpu, big);
  EXPECT_FALSE(r.supported);
  EXPECT_NE(std::string(r.reason).find("head_dim 512"), std::string::npos) << r.reason;

  const llm_device_info cpu = cpu_device_info(1);
  r = verdict(cpu, shape);
  EXPECT_FALSE(r.supported);
  EXPECT_NE(std::string(r.reason).find("CPU"), std::string::npos) << r.reason;

  llm_device_info turing = gpu;
  turing.compute_major = 7, turing.compute_minor = 5, turing.name = "fake T4";
  r = verdict(turing, shape);
  EXPECT_FALSE(r.supported);
  EXPECT_NE(std::string(r.reason).find("7.5"), std::string::npos) << r.reason;

  llm_attention_shape odd_gqa = shape;
  odd_gqa.num_kv_heads = 5;
  r = verdict(gpu, odd_gqa);
  EXPECT_FALSE(r.supported);
  EXPECT_NE(std::string(r.reason).find("multiple"), std::string::npos) << r.reason;

  llm_attention_shape bad_dtype = shape;
  bad_dtype.dtype = 7;
  r = verdict(gpu, bad_dtype);
  EXPECT_FALSE(r.supported);
  EXPECT_NE(std::string(r.reason).find("dtype"), std::string::npos) << r.reason;
}

TEST(MhaCuda, ProbeAcceptsTheRealGpu) {
  LLM_REQUIRE_GPU();
  auto plugin = load_mha_cuda();
  ASSERT_NE(plugin, nullptr);
  const llm_device_info device = gpu_info();
  llm_attention_shape shape{sizeof(llm_attention_shape), 80, 12, 4, LLM_DTYPE_F16, 2048, 4, LLM_KV_LAYOUT_PAGED, 16};
  llm_probe_result r{};
  r.struct_size = sizeof(r);
  ASSERT_EQ(plugin->iface().probe(&device, &shape, &r), LLM_OK);
  EXPECT_TRUE(r.supported) << r.reason;
}

TEST(MhaCuda, BadArgumentsAreRejectedWithAMessage) {
  LLM_REQUIRE_GPU();
  auto plugin = load_mha_cuda();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(1);
  Case tc{64, 4, 2, {1, 1}, {5, 9}};
  Problem problem(tc, rng);
  Context ctx(*plugin, problem.shape());
  ASSERT_EQ(ctx.status(), LLM_OK) << plugin->iface().last_error(nullptr);
  Stream stream;

  llm_attention_args a = problem.args(stream.get());
  a.q = nullptr;
  EXPECT_EQ(ctx.call(a, true), LLM_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(ctx.error()).find("NULL"), std::string::npos) << ctx.error();

  a = problem.args(stream.get());
  a.dtype = LLM_DTYPE_BF16;
  EXPECT_EQ(ctx.call(a, false), LLM_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(ctx.error()).find("dtype"), std::string::npos) << ctx.error();

  a = problem.args(stream.get());
  llm_kv_cache_view host_view = *a.kv;
  host_view.device_kind = LLM_DEVICE_CPU;
  a.kv = &host_view;
  EXPECT_EQ(ctx.call(a, true), LLM_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(ctx.error()).find("CUDA"), std::string::npos) << ctx.error();

  a = problem.args(stream.get());
  a.num_seqs = 0;
  EXPECT_EQ(ctx.call(a, false), LLM_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(ctx.error()).find("num_seqs"), std::string::npos) << ctx.error();

  // context_create refuses what probe refuses, with the reason in last_error(NULL).
  llm_attention_shape big = problem.shape();
  big.head_dim = 512;
  const llm_device_info device = gpu_info();
  llm_backend_context* none = nullptr;
  EXPECT_EQ(plugin->iface().context_create(&device, &big, &none), LLM_ERR_UNSUPPORTED);
  EXPECT_EQ(none, nullptr);
  EXPECT_NE(std::string(plugin->iface().last_error(nullptr)).find("head_dim"), std::string::npos);
}

}  // namespace
}  // namespace llm
