// mha_cpu.so, loaded as a plugin, against a float64 reference on fresh random inputs: head dims,
// GQA ratios, odd lengths, cached prefixes, batches of different lengths, contiguous and paged caches.
// Outputs are poisoned with NaN first, so an unwritten element fails; NaN never passes.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "engine.h"
#include "plugin_loader.h"

namespace llm {
namespace {

struct Case {
  int head_dim, q_heads, kv_heads;
  std::vector<int> q_lens, kv_lens;  // per sequence
  bool causal;
  bool paged;
};

std::shared_ptr<Plugin> load_mha_cpu() {
  for (auto& c : load_plugins({LLM_PLUGIN_DIR}))
    if (c.plugin && c.plugin->name() == "mha_cpu") return c.plugin;
  return nullptr;
}

// Relative L2 error of `out` against a float64 reference computed from the same cache and queries.
double run_case(const Plugin& plugin, const Case& tc, std::mt19937& rng, bool decode) {
  const int seqs = static_cast<int>(tc.q_lens.size());
  const int max_ctx = *std::max_element(tc.kv_lens.begin(), tc.kv_lens.end()) + 3;
  const int kv_dim = tc.kv_heads * tc.head_dim, q_dim = tc.q_heads * tc.head_dim;
  std::normal_distribution<float> normal(0.0f, 1.0f);

  // Cache: contiguous [slot][pos][kv_dim], or paged in blocks of 16 handed out in a shuffled order.
  const int block = 16, blocks_per_seq = (max_ctx + block - 1) / block;
  std::vector<float> k(static_cast<size_t>(seqs + 1) * blocks_per_seq * block * kv_dim), v(k.size());
  for (auto& x : k) x = normal(rng);
  for (auto& x : v) x = normal(rng);
  std::vector<int32_t> table(static_cast<size_t>(seqs + 1) * blocks_per_seq);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  llm_kv_cache_view view{};
  view.struct_size = sizeof(view);
  view.layout = tc.paged ? LLM_KV_LAYOUT_PAGED : LLM_KV_LAYOUT_CONTIGUOUS;
  view.dtype = LLM_DTYPE_F32;
  view.device_kind = LLM_DEVICE_CPU;
  view.k = k.data();
  view.v = v.data();
  view.seq_stride = static_cast<int64_t>(blocks_per_seq) * block * kv_dim;
  view.token_stride = kv_dim;
  view.head_stride = tc.head_dim;
  if (tc.paged) {
    view.block_size = block;
    view.max_blocks_per_seq = blocks_per_seq;
    view.block_stride = static_cast<int64_t>(block) * kv_dim;
    view.block_table = table.data();
  }

  std::vector<int32_t> q_start{0}, kv_len(tc.kv_lens.begin(), tc.kv_lens.end()), slot(seqs);
  for (int i = 0; i < seqs; ++i) {
    q_start.push_back(q_start.back() + tc.q_lens[i]);
    slot[i] = seqs - i;  // slots need not follow the batch order
  }
  const int total = q_start.back();
  std::vector<float> q(static_cast<size_t>(total) * q_dim), out(q.size(), std::nanf(""));
  for (auto& x : q) x = normal(rng);

  llm_attention_args a{};
  a.struct_size = sizeof(a);
  a.num_seqs = seqs;
  a.total_q_tokens = total;
  a.max_q_len = *std::max_element(tc.q_lens.begin(), tc.q_lens.end());
  a.max_kv_len = *std::max_element(tc.kv_lens.begin(), tc.kv_lens.end());
  a.causal = tc.causal;
  a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(tc.head_dim));
  a.dtype = LLM_DTYPE_F32;
  a.q = q.data();
  a.q_token_stride = q_dim;
  a.q_head_stride = tc.head_dim;
  a.out = out.data();
  a.out_token_stride = q_dim;
  a.out_head_stride = tc.head_dim;
  a.q_start = q_start.data();
  a.kv_len = kv_len.data();
  a.seq_slot = slot.data();
  a.kv = &view;

  llm_attention_shape shape{};
  shape.struct_size = sizeof(shape);
  shape.head_dim = tc.head_dim, shape.num_q_heads = tc.q_heads, shape.num_kv_heads = tc.kv_heads;
  shape.dtype = LLM_DTYPE_F32, shape.max_context = max_ctx, shape.max_batch = seqs + 1;
  shape.kv_layout = view.layout, shape.kv_block_size = tc.paged ? block : 0;
  ThreadPool pool(2);
  const llm_device_info device = cpu_device_info(2, &pool);
  const auto& t = plugin.iface();
  llm_backend_context* ctx = nullptr;
  EXPECT_EQ(t.context_create(&device, &shape, &ctx), LLM_OK);
  const llm_status s = decode ? t.decode(ctx, &a) : t.prefill(ctx, &a);
  EXPECT_EQ(s, LLM_OK) << t.last_error(ctx);
  t.context_destroy(ctx);

  double err2 = 0, ref2 = 0;
  const int group = tc.q_heads / tc.kv_heads;
  for (int i = 0; i < seqs; ++i)
    for (int j = 0; j < tc.q_lens[i]; ++j) {
      const int token = q_start[i] + j, pos = kv_len[i] - tc.q_lens[i] + j;
      const int n = tc.causal ? pos + 1 : kv_len[i];
      for (int h = 0; h < tc.q_heads; ++h) {
        const float* qv = &q[static_cast<size_t>(token) * q_dim + h * tc.head_dim];
        std::vector<double> w(n);
        double mx = -INFINITY, sum = 0;
        for (int p = 0; p < n; ++p) {
          const float* kp = &k[llm_kv_offset(&view, slot[i], p, h / group)];
          double d = 0;
          for (int c = 0; c < tc.head_dim; ++c) d += static_cast<double>(qv[c]) * kp[c];
          w[p] = d / std::sqrt(static_cast<double>(tc.head_dim));
          mx = std::max(mx, w[p]);
        }
        for (auto& x : w) sum += (x = std::exp(x - mx));
        for (int c = 0; c < tc.head_dim; ++c) {
          double ref = 0;
          for (int p = 0; p < n; ++p) ref += w[p] / sum * v[llm_kv_offset(&view, slot[i], p, h / group) + c];
          const float got = out[static_cast<size_t>(token) * q_dim + h * tc.head_dim + c];
          if (!std::isfinite(got)) return INFINITY;  // NaN (poison or computed) never passes
          err2 += (got - ref) * (got - ref);
          ref2 += ref * ref;
        }
      }
    }
  return std::sqrt(err2 / ref2);
}

TEST(MhaCpu, MatchesFloat64ReferenceOverShapeGrid) {
  auto plugin = load_mha_cpu();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(std::random_device{}());  // fresh inputs every run
  for (int head_dim : {8, 32, 64, 100, 128, 256})
    for (int ratio : {1, 2, 4, 8})
      for (bool paged : {false, true}) {
        const int kv_heads = 2, q_heads = kv_heads * ratio;
        // prefill: a fresh prompt, a chunk after a cached prefix, and a one-token chunk, batched
        Case prefill{head_dim, q_heads, kv_heads, {37, 5, 1}, {37, 70, 19}, true, paged};
        double err = run_case(*plugin, prefill, rng, false);
        EXPECT_LT(err, 1e-5) << "prefill d=" << head_dim << " gqa=" << ratio << " paged=" << paged;
        Case decode{head_dim, q_heads, kv_heads, {1, 1, 1, 1}, {1, 17, 64, 129}, true, paged};
        err = run_case(*plugin, decode, rng, true);
        EXPECT_LT(err, 1e-5) << "decode d=" << head_dim << " gqa=" << ratio << " paged=" << paged;
      }
}

TEST(MhaCpu, NonCausalAndLongContext) {
  auto plugin = load_mha_cpu();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(std::random_device{}());
  EXPECT_LT(run_case(*plugin, Case{64, 8, 8, {33, 7}, {33, 40}, false, false}, rng, false), 1e-5);
  EXPECT_LT(run_case(*plugin, Case{128, 32, 8, {1}, {4099}, true, false}, rng, true), 1e-5);
}

TEST(MhaCpu, DecodeRejectsMoreThanOneQueryPerSequenceWithAMessage) {
  auto plugin = load_mha_cpu();
  ASSERT_NE(plugin, nullptr);
  llm_attention_shape shape{sizeof(llm_attention_shape), 8, 2, 2, LLM_DTYPE_F32, 16, 1, 0, 0};
  const llm_device_info device = cpu_device_info(1);
  llm_backend_context* ctx = nullptr;
  ASSERT_EQ(plugin->iface().context_create(&device, &shape, &ctx), LLM_OK);
  std::vector<float> buf(16 * 16, 0.5f), out(2 * 16);
  llm_kv_cache_view view{};
  view.struct_size = sizeof(view);
  view.k = view.v = buf.data();
  view.seq_stride = 16 * 16, view.token_stride = 16, view.head_stride = 8;
  int32_t q_start[2] = {0, 2}, kv_len[1] = {4}, slot[1] = {0};
  llm_attention_args a{};
  a.struct_size = sizeof(a);
  a.num_seqs = 1, a.total_q_tokens = 2, a.max_q_len = 2, a.max_kv_len = 4, a.causal = 1, a.softmax_scale = 1;
  a.q = buf.data(), a.q_token_stride = 16, a.q_head_stride = 8, a.out = out.data(), a.out_token_stride = 16;
  a.out_head_stride = 8, a.q_start = q_start, a.kv_len = kv_len, a.seq_slot = slot, a.kv = &view;
  EXPECT_EQ(plugin->iface().decode(ctx, &a), LLM_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(plugin->iface().last_error(ctx)).find("exactly one query"), std::string::npos);
  plugin->iface().context_destroy(ctx);
}

}  // namespace
}  // namespace llm
