// The harness of the CUDA attention-plugin tests: random inputs rounded to the dtype, a problem on the
// device (contiguous or paged cache with a shuffled block table, shuffled cache slots, strided q/out), a
// float64 reference, NaN-poisoned outputs and an error table. Shared by mha_cuda's and flash_cuda's tests.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cuda_test_support.h"
#include "engine.h"
#include "plugin_loader.h"

namespace llm::attention_test {

#define ATT_CUDA_CHECK(expr)                                                                        \
  do {                                                                                              \
    const cudaError_t att_status_ = (expr);                                                         \
    if (att_status_ != cudaSuccess)                                                                 \
      throw std::runtime_error(std::string(#expr) + " failed: " + cudaGetErrorString(att_status_)); \
  } while (0)

// ---- device memory and streams, RAII ----

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) { ATT_CUDA_CHECK(cudaMalloc(&ptr_, std::max<size_t>(bytes, 1))); }
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
    ATT_CUDA_CHECK(cudaMemcpy(ptr_, src, bytes, cudaMemcpyHostToDevice));
    ATT_CUDA_CHECK(cudaDeviceSynchronize());
  }
  template <typename T>
  void upload(const std::vector<T>& v) {
    upload(v.data(), v.size() * sizeof(T));
  }
  std::vector<uint8_t> download() const {
    std::vector<uint8_t> bytes(bytes_);
    ATT_CUDA_CHECK(cudaMemcpy(bytes.data(), ptr_, bytes_, cudaMemcpyDeviceToHost));
    return bytes;
  }
  void poison() {  // all-ones: NaN in fp32, fp16 and bf16
    ATT_CUDA_CHECK(cudaMemset(ptr_, 0xff, bytes_));
    ATT_CUDA_CHECK(cudaDeviceSynchronize());
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_;
};

class Stream {
 public:
  Stream() { ATT_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void sync() const {
    ATT_CUDA_CHECK(cudaStreamSynchronize(s_));
    ATT_CUDA_CHECK(cudaGetLastError());
  }

 private:
  cudaStream_t s_ = nullptr;
};

// ---- dtypes on the host ----

inline size_t dtype_size(int dtype) { return dtype == LLM_DTYPE_F32 ? 4 : 2; }
inline const char* dtype_name(int dtype) {
  return dtype == LLM_DTYPE_F32 ? "fp32" : dtype == LLM_DTYPE_F16 ? "fp16" : "bf16";
}

inline void store(int dtype, float x, uint8_t* dst) {
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

inline float load(int dtype, const uint8_t* src) {
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

inline HostTensor random_tensor(size_t n, int dtype, std::mt19937& rng) {
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

// The built plugin called `name` (loaded once per process), or null.
inline std::shared_ptr<Plugin> load_backend(const std::string& name) {
  static const std::vector<PluginCandidate> candidates = load_plugins({LLM_PLUGIN_DIR});
  for (const auto& c : candidates)
    if (c.plugin && c.plugin->name() == name) return c.plugin;
  return nullptr;
}

inline llm_device_info gpu_info() {
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
  bool nan_past_end = false;  // cache positions past each sequence's length hold NaN (must never be read into out)
  uint32_t overlap = 0;       // llm_attention_args.overlap (LLM_OVERLAP_*)
};

inline std::string describe(const Case& tc, bool decode) {
  std::string lens;
  for (size_t i = 0; i < tc.q_lens.size(); ++i)
    lens += (i ? "," : "") + std::to_string(tc.q_lens[i]) + "/" + std::to_string(tc.kv_lens[i]);
  return std::string(decode ? "decode" : "prefill") + " " + dtype_name(tc.dtype) + " d=" + std::to_string(tc.head_dim) +
         " heads=" + std::to_string(tc.q_heads) + "/" + std::to_string(tc.kv_heads) +
         (tc.paged ? " paged" : " contig") + (tc.causal ? "" : " non-causal") + " q/kv=" + lens;
}

inline double tolerance(int dtype) { return dtype == LLM_DTYPE_F32 ? 1e-5 : 1e-2; }

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
    if (tc.nan_past_end) {  // all-ones bytes: NaN in every dtype
      const size_t es = k_.bytes.size() / cache_elems;
      for (int i = 0; i < seqs_; ++i)
        for (int pos = kv_len_[i]; pos < blocks_per_seq_ * tc.block; ++pos) {
          const size_t row =
              tc.paged ? static_cast<size_t>(table_[static_cast<size_t>(slot_[i]) * blocks_per_seq_ + pos / tc.block]) *
                                 tc.block +
                             pos % tc.block
                       : static_cast<size_t>(slot_[i]) * blocks_per_seq_ * tc.block + pos;
          std::fill_n(k_.bytes.begin() + row * kv_dim_ * es, kv_dim_ * es, 0xff);
          std::fill_n(v_.bytes.begin() + row * kv_dim_ * es, kv_dim_ * es, 0xff);
        }
    }
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
    host_view_ = view_;
    host_view_.block_table = table_.data();
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
    a.overlap = tc_.overlap;
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
  // (poison left or NaN computed) or when the padding between tokens was written. The reference rows of
  // a chunk of tokens are computed on every core (the reference was most of these tests' time), then
  // compared in token, head, component order, so the error and the first non-finite element reported do
  // not depend on the number of cores.
  double error(const std::vector<uint8_t>& out, std::string* where) const {
    const size_t es = dtype_size(tc_.dtype);
    const int d = tc_.head_dim, heads = tc_.q_heads;
    constexpr int kChunkTokens = 64;
    std::vector<double> ref(static_cast<size_t>(kChunkTokens) * heads * d);
    double err2 = 0, ref2 = 0;
    for (int t0 = 0; t0 < total_; t0 += kChunkTokens) {
      const int rows = std::min(kChunkTokens, total_ - t0) * heads;
      parallel_rows(rows, [&](int row, std::vector<double>& w, std::vector<const float*>& kv_rows) {
        reference_row(t0 + row / heads, row % heads, &ref[static_cast<size_t>(row) * d], w, kv_rows);
      });
      for (int row = 0; row < rows; ++row) {
        const int token = t0 + row / heads, h = row % heads;
        for (int c = 0; c < d; ++c) {
          const double r = ref[static_cast<size_t>(row) * d + c];
          const double got = load(tc_.dtype, &out[(static_cast<size_t>(token) * q_dim_ + h * d + c) * es]);
          if (!std::isfinite(got)) {
            *where = "non-finite output at token " + std::to_string(token) + " head " + std::to_string(h) +
                     " component " + std::to_string(c);
            return INFINITY;
          }
          err2 += (got - r) * (got - r);
          ref2 += r * r;
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
  // out[0, d) = softmax(q . k_p / sqrt(d)) . v_p over the keys query `token` sees, head `h`, in float64.
  // Sums run over the keys in order, so the result does not depend on which thread computes it.
  void reference_row(int token, int h, double* out, std::vector<double>& w, std::vector<const float*>& kv_rows) const {
    const int d = tc_.head_dim, group = tc_.q_heads / tc_.kv_heads;
    const int seq = static_cast<int>(std::upper_bound(q_start_.begin(), q_start_.end(), token) - q_start_.begin()) - 1;
    const int q_len = q_start_[seq + 1] - q_start_[seq], pos = kv_len_[seq] - q_len + (token - q_start_[seq]);
    const int n = tc_.causal ? pos + 1 : kv_len_[seq];
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const float* qv = &q_.values[static_cast<size_t>(token) * q_dim_ + h * d];
    w.assign(n, 0.0);
    kv_rows.resize(n);
    double mx = -INFINITY, sum = 0;
    for (int p = 0; p < n; ++p) {
      const size_t at = offset(seq, p, h / group);  // K and V share the layout
      kv_rows[p] = &v_.values[at];
      const float* kp = &k_.values[at];
      double dot = 0;
      for (int c = 0; c < d; ++c) dot += static_cast<double>(qv[c]) * kp[c];
      w[p] = dot * scale;
      mx = std::max(mx, w[p]);
    }
    for (auto& x : w) sum += (x = std::exp(x - mx));
    std::fill_n(out, d, 0.0);
    for (int p = 0; p < n; ++p)
      for (int c = 0; c < d; ++c) out[c] += w[p] * kv_rows[p][c];
    for (int c = 0; c < d; ++c) out[c] /= sum;
  }

  // fn(row, scratch...) for every row in [0, rows), spread over the machine's cores.
  template <typename F>
  static void parallel_rows(int rows, const F& fn) {
    const int workers = std::max(1, std::min<int>(rows, static_cast<int>(std::thread::hardware_concurrency())));
    std::atomic<int> next{0};
    auto work = [&] {
      std::vector<double> w;
      std::vector<const float*> kv_rows;
      for (int row; (row = next.fetch_add(1)) < rows;) fn(row, w, kv_rows);
    };
    std::vector<std::thread> pool;
    for (int i = 1; i < workers; ++i) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
  }

  // Where (seq, pos, kv head) is in the host copies of the cache: the SDK's own addressing.
  size_t offset(int seq, int pos, int kv_head) const {
    return static_cast<size_t>(llm_kv_offset(&host_view_, slot_[seq], pos, kv_head));
  }

  Case tc_;
  int seqs_, max_ctx_, kv_dim_, q_dim_, slots_, blocks_per_seq_, total_;
  HostTensor k_, v_, q_;
  std::vector<int32_t> table_, q_start_, kv_len_, slot_;
  std::unique_ptr<DeviceBuffer> d_k_, d_v_, d_q_, d_out_, d_table_, d_q_start_, d_kv_len_, d_slot_;
  llm_kv_cache_view view_{}, host_view_{};  // host_view_: view_ with the host's block table
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
// Runs the case `calls` times on one context (outputs poisoned before each): every call within the
// tolerance, and every call's bits equal to the first's. Returns the largest error.
inline double run_case(const Plugin& plugin, const Case& tc, std::mt19937& rng, bool decode, int calls = 1) {
  Problem problem(tc, rng);
  Context ctx(plugin, problem.shape());
  EXPECT_EQ(ctx.status(), LLM_OK) << plugin.iface().last_error(nullptr);
  if (ctx.status() != LLM_OK) return INFINITY;
  Stream stream;
  double worst = 0;
  std::vector<uint8_t> first;
  for (int call = 0; call < calls; ++call) {
    problem.out().poison();
    const llm_status s = ctx.call(problem.args(stream.get()), decode);
    EXPECT_EQ(s, LLM_OK) << ctx.error();
    if (s != LLM_OK) return INFINITY;
    stream.sync();
    std::string where;
    const std::vector<uint8_t> out = problem.out().download();
    const double err = problem.error(out, &where);
    EXPECT_LT(err, tolerance(tc.dtype)) << describe(tc, decode) << " call " << call << " " << where;
    worst = std::max(worst, err);
    if (call == 0)
      first = out;
    else
      EXPECT_EQ(out, first) << describe(tc, decode) << ": call " << call << " differs from the first";
  }
  return worst;
}

// Decode through `plugin` in `dtype` is graph-safe and deterministic: two direct calls give the same bits
// (within the tolerance of the reference); a call captured in a CUDA graph gives them again on replay (no
// host synchronisation or allocation inside a call, or capture fails); and a replay after the contexts grow
// (the next decode step) equals a direct call on the same data, so the graph reads fresh device arrays.
inline void expect_decode_capturable_and_deterministic(const Plugin& plugin, int dtype, std::mt19937& rng) {
  SCOPED_TRACE(std::string(plugin.name()) + " " + dtype_name(dtype));
  Case tc{128, 16, 4, {1, 1, 1}, {700, 33, 2000}};
  tc.dtype = dtype, tc.paged = true, tc.loose_bounds = true;
  Problem problem(tc, rng);
  Context ctx(plugin, problem.shape());
  ASSERT_EQ(ctx.status(), LLM_OK) << plugin.iface().last_error(nullptr);
  Stream stream;
  const llm_attention_args a = problem.args(stream.get());

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

// The shape grid every CUDA backend is held to, in each of `dtypes`: `head_dims`, GQA 1/2/4/8, contiguous
// and paged caches (blocks of `ratio2_block` keys at GQA 2, of 16 otherwise), causal. Prefill: a fresh
// prompt, a chunk after a long cached prefix, a one-token chunk and a sequence with no queries, batched,
// lengths off the kernels' tiles; decode: contexts of 1, 17, 300 and 1029 keys.
template <size_t N>
void check_shape_grid(const Plugin& plugin, const int (&dtypes)[N], std::initializer_list<int> head_dims,
                      int ratio2_block, const std::string& title, std::mt19937& rng) {
  ErrorTable table;
  for (int dtype : dtypes)
    for (int head_dim : head_dims)
      for (int ratio : {1, 2, 4, 8})
        for (bool paged : {false, true}) {
          const int kv_heads = 2, q_heads = kv_heads * ratio;
          Case prefill{head_dim, q_heads, kv_heads, {37, 5, 1, 0}, {37, 700, 19, 3}};
          prefill.paged = paged, prefill.dtype = dtype, prefill.block = ratio == 2 ? ratio2_block : 16;
          table.add(std::string(dtype_name(dtype)) + " prefill d=" + std::to_string(head_dim),
                    run_case(plugin, prefill, rng, false));
          Case decode{head_dim, q_heads, kv_heads, {1, 1, 1, 1}, {1, 17, 300, 1029}};
          decode.paged = paged, decode.dtype = dtype;
          table.add(std::string(dtype_name(dtype)) + " decode  d=" + std::to_string(head_dim),
                    run_case(plugin, decode, rng, true));
        }
  table.print(title.c_str());
}

// Long decode contexts every CUDA backend is held to, added to `table`: 4K keys (d = 128, 32/8), 16K and 9K
// keys in a paged cache (d = 128, 8/1), 16.5K keys at d = 256 (8/2).
inline void add_long_decodes(const Plugin& plugin, int dtype, std::mt19937& rng, ErrorTable& table) {
  const std::string tag = dtype_name(dtype);
  Case d4k{128, 32, 8, {1}, {4099}};
  d4k.dtype = dtype, d4k.extra_slots = 0;
  table.add(tag + " decode 4K d=128 32/8", run_case(plugin, d4k, rng, true));
  Case d16k{128, 8, 1, {1, 1}, {16384, 9001}};
  d16k.dtype = dtype, d16k.paged = true, d16k.extra_slots = 0;
  table.add(tag + " decode 16K+9K paged d=128 8/1", run_case(plugin, d16k, rng, true));
  Case d16k_256{256, 8, 2, {1}, {16500}};
  d16k_256.dtype = dtype, d16k_256.extra_slots = 0;
  table.add(tag + " decode 16.5K d=256 8/2", run_case(plugin, d16k_256, rng, true));
}

// A CUDA device of compute capability major.minor for a backend's probe (no GPU needed).
inline llm_device_info fake_gpu(int major, int minor, const char* name) {
  llm_device_info gpu{};
  gpu.struct_size = sizeof(gpu);
  gpu.kind = LLM_DEVICE_CUDA;
  gpu.compute_major = major, gpu.compute_minor = minor;
  gpu.num_threads = 1;
  gpu.name = name;
  return gpu;
}

// The backend's verdict on `shape` for `device` (its probe must answer LLM_OK).
inline llm_probe_result probe_verdict(const Plugin& plugin, const llm_device_info& device,
                                      const llm_attention_shape& shape) {
  llm_probe_result r{};
  r.struct_size = sizeof(r);
  EXPECT_EQ(plugin.iface().probe(&device, &shape, &r), LLM_OK);
  return r;
}

// The backend refuses `shape` on `device` with a reason that names `needle`.
inline void expect_refused(const Plugin& plugin, const llm_device_info& device, const llm_attention_shape& shape,
                           const char* needle) {
  const llm_probe_result r = probe_verdict(plugin, device, shape);
  EXPECT_FALSE(r.supported) << needle;
  EXPECT_NE(std::string(r.reason).find(needle), std::string::npos) << r.reason;
}

inline unsigned fresh_seed() {
  const unsigned seed = std::random_device{}();
  std::printf("random seed %u\n", seed);
  return seed;
}

}  // namespace llm::attention_test
