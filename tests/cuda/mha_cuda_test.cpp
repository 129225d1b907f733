// mha_cuda.so, loaded as a plugin, against a float64 reference on fresh random inputs: fp32, fp16 and
// bf16, head dims, GQA ratios, odd lengths, cached prefixes, batches of different lengths in shuffled
// cache slots, contiguous and paged (shuffled block table) caches, causal and not, long contexts, decode
// in a CUDA graph. Inputs are rounded to the dtype first and the reference computes from the rounded
// values. Outputs are poisoned with NaN first, so an unwritten element fails; NaN never passes.
// The GPU tests skip where no usable GPU is present; the probe's refusals are checked everywhere.
#include "attention_test_support.h"

namespace llm {
namespace {

using namespace attention_test;

std::shared_ptr<Plugin> load_mha_cuda() { return load_backend("mha_cuda"); }

constexpr int kDtypes[] = {LLM_DTYPE_F32, LLM_DTYPE_BF16, LLM_DTYPE_F16};

TEST(MhaCuda, MatchesFloat64ReferenceOverShapeGrid) {
  LLM_REQUIRE_GPU();
  auto plugin = load_mha_cuda();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  check_shape_grid(*plugin, kDtypes, {32, 40, 64, 72, 80, 96, 128, 256}, 7,
                   "shape grid (GQA 1/2/4/8, contiguous and paged, causal)", rng);
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
    add_long_decodes(*plugin, dtype, rng, table);
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
  for (int dtype : {LLM_DTYPE_F32, LLM_DTYPE_BF16}) expect_decode_capturable_and_deterministic(*plugin, dtype, rng);
}

TEST(MhaCuda, ProbeRefusesWithReasons) {  // no GPU needed: the probe reads only the device info
  auto plugin = load_mha_cuda();
  ASSERT_NE(plugin, nullptr);
  const auto& t = plugin->iface();
  EXPECT_EQ(t.device_kind, LLM_DEVICE_CUDA);
  EXPECT_EQ(t.priority, 20);
  EXPECT_STREQ(t.version, "1.0.0");
  llm_attention_shape shape{sizeof(llm_attention_shape), 128, 32, 8, LLM_DTYPE_BF16, 4096, 8, 0, 0};
  const llm_device_info gpu = fake_gpu(9, 0, "fake H100");
  const llm_probe_result r = probe_verdict(*plugin, gpu, shape);
  EXPECT_TRUE(r.supported) << r.reason;
  EXPECT_EQ(r.capabilities,
            LLM_CAP_PREFILL | LLM_CAP_DECODE | LLM_CAP_PAGED_KV | LLM_CAP_CUDA_GRAPH_SAFE | LLM_CAP_DETERMINISTIC);

  llm_attention_shape s = shape;
  s.head_dim = 512;
  expect_refused(*plugin, gpu, s, "head_dim 512");
  expect_refused(*plugin, cpu_device_info(1), shape, "CPU");
  expect_refused(*plugin, fake_gpu(7, 5, "fake T4"), shape, "7.5");
  s = shape;
  s.num_kv_heads = 5;
  expect_refused(*plugin, gpu, s, "multiple");
  s = shape;
  s.dtype = 7;
  expect_refused(*plugin, gpu, s, "dtype");
}

TEST(MhaCuda, ProbeAcceptsTheRealGpu) {
  LLM_REQUIRE_GPU();
  auto plugin = load_mha_cuda();
  ASSERT_NE(plugin, nullptr);
  const llm_device_info device = gpu_info();
  llm_attention_shape shape{sizeof(llm_attention_shape), 80, 12, 4, LLM_DTYPE_F16, 2048, 4, LLM_KV_LAYOUT_PAGED, 16};
  const llm_probe_result r = probe_verdict(*plugin, device, shape);
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
