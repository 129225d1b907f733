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
