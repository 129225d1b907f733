// flash_cuda.so, loaded as a plugin, against the float64 reference on fresh random inputs (bf16 and
// fp16, relative error < 1e-2): head dims (full-width kernels and zero-padded ones), GQA ratios 1-32,
// odd lengths that are not multiples of the tiles, cached prefixes, batches of different lengths in
// shuffled cache slots, contiguous and paged caches, causal and not, contexts to 16K, decode with split
// keys in a CUDA graph. Outputs are poisoned with NaN first; NaN never passes. The probe's refusals
// (fp32, head dims, devices) and the call's (alignment) are checked with their reasons.
#include "attention_test_support.h"

namespace llm {
namespace {

using namespace attention_test;

std::shared_ptr<Plugin> load_flash() { return load_backend("flash_cuda"); }

constexpr int kDtypes[] = {LLM_DTYPE_BF16, LLM_DTYPE_F16};

// Sets an environment variable that new contexts read (LLM_FLASH_PREFILL: which prefill kernel;
// LLM_FLASH_DECODE_SPLITS: how many key ranges decode uses; LLM_FLASH_DECODE_COPY: how decode copies K and
// V in; LLM_FLASH_DECODE_MERGE: how decode merges its splits) for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~ScopedEnv() { ::unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

TEST(FlashCuda, MatchesFloat64ReferenceOverShapeGrid) {
  LLM_REQUIRE_GPU();
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  check_shape_grid(*plugin, kDtypes, {8, 32, 64, 80, 96, 128, 256}, 8,
                   "flash_cuda shape grid (GQA 1/2/4/8, contiguous and paged, causal)", rng);
}

TEST(FlashCuda, NonCausalStridedWideGroupsAndLooseBounds) {
  LLM_REQUIRE_GPU();
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  ErrorTable table;
  for (int dtype : kDtypes)
    for (bool paged : {false, true}) {
      const std::string tag = std::string(dtype_name(dtype)) + (paged ? " paged " : " contig ");
      Case nc{64, 8, 8, {130, 7}, {130, 200}};
      nc.causal = false, nc.paged = paged, nc.dtype = dtype;
      table.add(tag + "prefill non-causal d=64 8/8", run_case(*plugin, nc, rng, false));
      Case nc2{128, 12, 4, {5, 300}, {600, 300}};
      nc2.causal = false, nc2.paged = paged, nc2.dtype = dtype;
      table.add(tag + "prefill non-causal d=128 12/4", run_case(*plugin, nc2, rng, false));
      Case strided{96, 6, 2, {9, 1, 4}, {20, 2, 4}};
      strided.pad = 24, strided.paged = paged, strided.dtype = dtype;
      table.add(tag + "prefill strided q/out d=96 6/2", run_case(*plugin, strided, rng, false));
      Case mqa{128, 32, 1, {3, 70}, {90, 70}};  // a group of 32 heads: several row tiles per kv head
      mqa.paged = paged, mqa.dtype = dtype;
      table.add(tag + "prefill MQA d=128 32/1", run_case(*plugin, mqa, rng, false));
      Case mqa_decode{128, 32, 1, {1, 1}, {90, 3000}};
      mqa_decode.paged = paged, mqa_decode.dtype = dtype;
      table.add(tag + "decode MQA d=128 32/1", run_case(*plugin, mqa_decode, rng, true));
      Case loose{128, 16, 2, {1, 1, 1}, {5, 900, 64}};
      loose.loose_bounds = true, loose.paged = paged, loose.dtype = dtype;
      table.add(tag + "decode loose max_q/max_kv d=128 16/2", run_case(*plugin, loose, rng, true));
      Case loose_prefill{64, 3, 1, {3, 20}, {3, 300}};
      loose_prefill.loose_bounds = true, loose_prefill.paged = paged, loose_prefill.dtype = dtype;
      table.add(tag + "prefill loose max_q/max_kv d=64 3/1", run_case(*plugin, loose_prefill, rng, false));
    }
  table.print("non-causal, strided, wide groups, loose bounds");
}

TEST(FlashCuda, LongContexts) {
  LLM_REQUIRE_GPU();
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  ErrorTable table;
  for (int dtype : kDtypes) {
    const std::string tag = dtype_name(dtype);
    add_long_decodes(*plugin, dtype, rng, table);
    Case chunk{64, 8, 2, {67}, {16000}};  // a prefill chunk after a 16K prefix
    chunk.dtype = dtype, chunk.paged = true, chunk.extra_slots = 1;
    table.add(tag + " prefill 67 after 16K paged d=64 8/2", run_case(*plugin, chunk, rng, false));
    Case prompt{128, 2, 2, {2053}, {2053}};  // a long fresh prompt
    prompt.dtype = dtype, prompt.extra_slots = 1;
    table.add(tag + " prefill 2053 d=128 2/2", run_case(*plugin, prompt, rng, false));
    Case prompt_nc{64, 2, 1, {1500}, {1500}};
    prompt_nc.dtype = dtype, prompt_nc.extra_slots = 1, prompt_nc.causal = false;
    table.add(tag + " prefill 1500 non-causal d=64 2/1", run_case(*plugin, prompt_nc, rng, false));
  }
  table.print("long contexts");
}

// On an H100/H200 the tests above run head dims 64 and 128 through the Hopper kernel (warpgroup MMAs) and
// the others through the portable one; this runs 64 and 128 through the portable kernel as well, and
// holds the two kernels to the same reference.
TEST(FlashCuda, BothPrefillKernelsMatchTheReference) {
  LLM_REQUIRE_GPU();
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  ErrorTable table;
  for (const char* kernel : {"sm80", "auto"}) {
    ScopedEnv choice("LLM_FLASH_PREFILL", kernel);
    for (int dtype : kDtypes)
      for (int head_dim : {64, 128})
        for (bool causal : {true, false}) {
          const std::string tag = std::string(kernel) + " " + dtype_name(dtype) + " d=" + std::to_string(head_dim) +
                                  (causal ? " causal" : " non-causal");
          Case batch{head_dim, 8, 2, {300, 5, 1, 0, 129}, {300, 900, 19, 3, 129}};
          batch.dtype = dtype, batch.causal = causal, batch.paged = head_dim == 64;
          table.add(tag + " batch", run_case(*plugin, batch, rng, false));
          Case mqa{head_dim, 16, 1, {77}, {1100}};
          mqa.dtype = dtype, mqa.causal = causal;
          table.add(tag + " MQA 16/1 after prefix", run_case(*plugin, mqa, rng, false));
          // A group of 6: a thread's Q rows (16 or 8 apart) fall at a different head each time and wrap
          // into the next token (RowWalker), across sequences of other lengths.
          Case odd_group{head_dim, 12, 2, {45, 130}, {45, 260}};
          odd_group.dtype = dtype, odd_group.causal = causal;
          table.add(tag + " group 6", run_case(*plugin, odd_group, rng, false));
          // Far more work items (128-row tiles of a sequence and kv head) than SMs: the Hopper kernel's
          // persistent blocks take a few each, of different lengths, and carry their pipelines across them.
          if (std::string(kernel) == "sm80") continue;
          Case many{head_dim, 8, 1, {}, {}};
          for (int i = 0; i < 48; ++i) {
            const int q = i % 7 == 6 ? 0 : 20 + (i * 29) % 131;
            many.q_lens.push_back(q);
            many.kv_lens.push_back(q + (i % 3) * 40);
          }
          many.dtype = dtype, many.causal = causal, many.paged = head_dim == 128;
          table.add(tag + " 48 sequences, ~250 items, 3 calls", run_case(*plugin, many, rng, false, 3));
        }
  }
  table.print("prefill kernels: portable (sm80) and chosen (auto: the Hopper kernel on compute 9.0)");
}

// The Hopper kernel copies whole 128-key tiles, also past a sequence's last key: what the cache holds
// there (here NaN) must not reach the output, in prefill or decode, contiguous or paged.
TEST(FlashCuda, CacheEntriesPastTheLengthNeverReachTheOutput) {
  LLM_REQUIRE_GPU();
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  ErrorTable table;
  for (int dtype : kDtypes)
    for (int head_dim : {64, 128})
      for (bool paged : {false, true})
        for (bool causal : {true, false}) {
          const std::string tag = std::string(dtype_name(dtype)) + " d=" + std::to_string(head_dim) +
                                  (paged ? " paged" : " contig") + (causal ? " causal" : " non-causal");
          Case prefill{head_dim, 8, 2, {200, 3, 70}, {200, 77, 333}};
          prefill.dtype = dtype, prefill.paged = paged, prefill.causal = causal, prefill.nan_past_end = true;
          table.add(tag + " prefill", run_case(*plugin, prefill, rng, false));
          if (!causal) continue;
          Case decode{head_dim, 8, 2, {1, 1}, {130, 1000}};
          decode.dtype = dtype, decode.paged = paged, decode.nan_past_end = true;
          table.add(tag + " decode", run_case(*plugin, decode, rng, true));
        }
  table.print("NaN in the cache past every sequence's length");
}

// Every split plan gives the reference's answer, and the same bits call after call: ranges that end
// inside a tile, sequences shorter than the splits (empty ranges), MQA with two row tiles per kv head.
TEST(FlashCuda, DecodeMatchesTheReferenceWithEverySplitCount) {
  LLM_REQUIRE_GPU();
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  ErrorTable table;
  for (const char* splits : {"auto", "1", "2", "3", "7", "32"})
    for (int dtype : kDtypes) {
      ScopedEnv plan("LLM_FLASH_DECODE_SPLITS", splits);
      const std::string tag = std::string("splits=") + splits + " " + dtype_name(dtype);
      Case gqa{128, 32, 8, {1, 1, 1, 1, 1, 1}, {1, 63, 64, 65, 700, 4099}};
      gqa.dtype = dtype, gqa.paged = std::string(splits) == "3";
      table.add(tag + " GQA 32/8, 3 calls", run_case(*plugin, gqa, rng, true, 3));
      Case mqa{64, 32, 1, {1, 1}, {2, 1500}};
      mqa.dtype = dtype;
      table.add(tag + " MQA 32/1", run_case(*plugin, mqa, rng, true));
    }
  table.print("decode with every split plan");
}

// On Hopper the tests above run decode through the copy engine where they can (contiguous caches, head
// dims whose kernel is a multiple of 64); this runs decode with cp.async as well, the way other GPUs and
// paged caches do, and holds both to the reference: a head dim short of its kernel's (120: the engine
// fills the missing columns with zeros; 80: cp.async only), ranges ending inside a tile, NaN in the cache
// past the lengths.
TEST(FlashCuda, BothDecodeCopyPathsMatchTheReference) {
  LLM_REQUIRE_GPU();
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  ErrorTable table;
  for (const char* copy : {"cp_async", "auto"}) {
    ScopedEnv path("LLM_FLASH_DECODE_COPY", copy);
    for (const char* splits : {"1", "auto"}) {
      ScopedEnv plan("LLM_FLASH_DECODE_SPLITS", splits);
      for (int dtype : kDtypes)
        for (int head_dim : {64, 80, 120, 128, 256})
          for (bool paged : {false, true}) {
            const std::string tag = std::string(copy) + " splits=" + splits + " " + dtype_name(dtype) +
                                    " d=" + std::to_string(head_dim) + (paged ? " paged" : " contig");
            Case decode{head_dim, 16, 4, {1, 1, 1, 1}, {1, 63, 130, 2049}};
            decode.dtype = dtype, decode.paged = paged, decode.nan_past_end = true;
            table.add(tag, run_case(*plugin, decode, rng, true, 2));
          }
    }
  }
  table.print("decode through cp.async and through the copy engine");
}

// On Hopper decode merges its key splits inside a thread block cluster where the plan fits one (up to 16
// splits), else through global memory. Both merges against the reference, with the same bits call after
// call: split counts up to the cluster's limit and past it, ranges left empty by short sequences, two row
// tiles per kv head (MQA 32/1), one row (MHA), every kernel width the copy engine serves, NaN in the cache
// past the ends.
TEST(FlashCuda, DecodeSplitMergesMatchTheReference) {
  LLM_REQUIRE_GPU();
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  ErrorTable table;
  for (const char* merge : {"global", "auto"}) {
    ScopedEnv how("LLM_FLASH_DECODE_MERGE", merge);
    for (const char* splits : {"auto", "2", "5", "16", "17"}) {
      ScopedEnv plan("LLM_FLASH_DECODE_SPLITS", splits);
      for (int dtype : kDtypes) {
        const std::string tag = std::string(merge) + " splits=" + splits + " " + dtype_name(dtype);
        for (int head_dim : {64, 128, 256}) {
          Case gqa{head_dim, 16, 2, {1, 1, 1, 1}, {3, 64, 333, 1100}};
          gqa.dtype = dtype, gqa.nan_past_end = true;
          table.add(tag + " d=" + std::to_string(head_dim) + " GQA 16/2, 3 calls",
                    run_case(*plugin, gqa, rng, true, 3));
        }
        Case mqa{128, 32, 1, {1, 1}, {9, 1500}};
        mqa.dtype = dtype;
        table.add(tag + " MQA 32/1", run_case(*plugin, mqa, rng, true));
        Case mha{128, 8, 8, {1, 1}, {700, 2}};  // one row a cluster (Llama-2-7B's attention)
        mha.dtype = dtype, mha.nan_past_end = true;
        table.add(tag + " MHA 8/8, 3 calls", run_case(*plugin, mha, rng, true, 3));
      }
    }
  }
  table.print("decode's split merge through global memory and through clusters");
}

// Decode offered the runtime's overlap (llm_attention_args.overlap): launched early, copying the tiles wholly
// before each sequence's new token ahead of its wait, and letting the next kernel start. Against the
// reference, the same bits call after call, both merges: ranges ending inside a tile and at the new token,
// empty ranges, two row tiles per kv head, NaN in the cache past the ends. (No kernel runs before it here:
// the race it must not lose, q and the new entries written by the kernel before, is tested on the model,
// LlamaCuda.DecodeOverlappingTheProductsGivesTheSameLogits.)
TEST(FlashCuda, DecodeOverlappingItsNeighboursMatchesTheReference) {
  LLM_REQUIRE_GPU();
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  ErrorTable table;
  for (uint32_t overlap : {LLM_OVERLAP_EARLY_START, LLM_OVERLAP_EARLY_START | LLM_OVERLAP_EARLY_NEXT}) {
    for (const char* merge : {"global", "auto"}) {
      ScopedEnv how("LLM_FLASH_DECODE_MERGE", merge);
      for (const char* splits : {"auto", "1", "3", "16"}) {
        ScopedEnv plan("LLM_FLASH_DECODE_SPLITS", splits);
        for (int dtype : kDtypes) {
          const std::string tag = std::string(overlap == LLM_OVERLAP_EARLY_START ? "start " : "start+next ") + merge +
                                  " splits=" + splits + " " + dtype_name(dtype);
          for (int head_dim : {64, 128, 256}) {
            Case gqa{head_dim, 16, 2, {1, 1, 1, 1, 1}, {1, 64, 65, 333, 1100}};
            gqa.dtype = dtype, gqa.nan_past_end = true, gqa.overlap = overlap;
            table.add(tag + " d=" + std::to_string(head_dim) + " GQA 16/2, 3 calls",
                      run_case(*plugin, gqa, rng, true, 3));
          }
          Case mha{128, 8, 8, {1, 1}, {700, 129}};
          mha.dtype = dtype, mha.nan_past_end = true, mha.overlap = overlap;
          table.add(tag + " MHA 8/8, 3 calls", run_case(*plugin, mha, rng, true, 3));
        }
      }
    }
  }
  table.print("decode overlapping the kernels around it");
}

TEST(FlashCuda, KernelChoicesAreCheckedWithReasons) {  // no GPU needed: refused before the device
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  const auto& t = plugin->iface();
  llm_attention_shape shape{sizeof(llm_attention_shape), 128, 32, 8, LLM_DTYPE_BF16, 4096, 8, 0, 0};
  const llm_device_info ampere = fake_gpu(8, 0, "fake A100");
  auto create_error = [&](const llm_device_info& d, const llm_attention_shape& s) {
    llm_backend_context* ctx = nullptr;
    const llm_status st = t.context_create(&d, &s, &ctx);
    EXPECT_NE(st, LLM_OK);
    if (ctx) t.context_destroy(ctx);
    return std::string(t.last_error(nullptr));
  };
  for (const char* bad : {"0", "33", "many", "4x"}) {
    ScopedEnv plan("LLM_FLASH_DECODE_SPLITS", bad);
    const std::string e = create_error(ampere, shape);
    EXPECT_NE(e.find(std::string("LLM_FLASH_DECODE_SPLITS is '") + bad + "'; expected auto or a count from 1 to 32"),
              std::string::npos)
        << e;
  }
  {
    ScopedEnv copy("LLM_FLASH_DECODE_COPY", "bulk");
    const std::string e = create_error(ampere, shape);
    EXPECT_NE(e.find("LLM_FLASH_DECODE_COPY is 'bulk'; expected auto, cp_async or tma"), std::string::npos) << e;
  }
  {
    ScopedEnv copy("LLM_FLASH_DECODE_COPY", "tma");
    const std::string e = create_error(ampere, shape);
    EXPECT_NE(e.find("the copy engine needs compute capability 9.0 or newer (this device: 8.0)"), std::string::npos)
        << e;
  }
  {
    ScopedEnv merge("LLM_FLASH_DECODE_MERGE", "ring");
    const std::string e = create_error(ampere, shape);
    EXPECT_NE(e.find("LLM_FLASH_DECODE_MERGE is 'ring'; expected auto, global or cluster"), std::string::npos) << e;
  }
  {
    ScopedEnv merge("LLM_FLASH_DECODE_MERGE", "cluster");
    const std::string e = create_error(ampere, shape);
    EXPECT_NE(e.find("the cluster merge needs compute capability 9.0 or newer with decode's copies through the copy "
                     "engine (this device: 8.0)"),
              std::string::npos)
        << e;
  }
  {
    ScopedEnv choice("LLM_FLASH_PREFILL", "fastest");
    const std::string e = create_error(ampere, shape);
    EXPECT_NE(e.find("LLM_FLASH_PREFILL is 'fastest'; expected auto, sm80 or sm90"), std::string::npos) << e;
  }
  {
    ScopedEnv choice("LLM_FLASH_PREFILL", "sm90");
    const std::string e = create_error(ampere, shape);
    EXPECT_NE(e.find("compute capability 9.0 (this device: 8.0)"), std::string::npos) << e;
    llm_attention_shape d96 = shape;
    d96.head_dim = 96;
    const std::string e96 = create_error(fake_gpu(9, 0, "fake H100"), d96);
    EXPECT_NE(e96.find("kernel is 64 or 128 (96)"), std::string::npos) << e96;
  }
}

TEST(FlashCuda, DecodeIsCapturableInACudaGraphAndDeterministic) {
  LLM_REQUIRE_GPU();
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(fresh_seed());
  for (int dtype : kDtypes) expect_decode_capturable_and_deterministic(*plugin, dtype, rng);
}

TEST(FlashCuda, ProbeRefusesWithReasons) {  // no GPU needed: the probe reads only the device info
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  const auto& t = plugin->iface();
  EXPECT_EQ(t.device_kind, LLM_DEVICE_CUDA);
  EXPECT_GT(t.priority, load_backend("mha_cuda")->iface().priority) << "flash_cuda leads mha_cuda by default";
  llm_attention_shape shape{sizeof(llm_attention_shape), 128, 32, 8, LLM_DTYPE_BF16, 4096, 8, 0, 0};
  const llm_device_info gpu = fake_gpu(9, 0, "fake H100");
  llm_probe_result r = probe_verdict(*plugin, gpu, shape);
  EXPECT_TRUE(r.supported) << r.reason;
  EXPECT_EQ(r.capabilities,
            LLM_CAP_PREFILL | LLM_CAP_DECODE | LLM_CAP_PAGED_KV | LLM_CAP_CUDA_GRAPH_SAFE | LLM_CAP_DETERMINISTIC);
  r = probe_verdict(*plugin, fake_gpu(8, 0, "fake A100"), shape);
  EXPECT_TRUE(r.supported) << "the portable sm_80 path: " << r.reason;

  llm_attention_shape s = shape;
  s.dtype = LLM_DTYPE_F32;
  expect_refused(*plugin, gpu, s, "fp32");
  s = shape;
  s.head_dim = 100;
  expect_refused(*plugin, gpu, s, "head_dim 100");
  s.head_dim = 512;
  expect_refused(*plugin, gpu, s, "head_dim 512");
  expect_refused(*plugin, cpu_device_info(1), shape, "CPU");
  expect_refused(*plugin, fake_gpu(7, 5, "fake T4"), shape, "7.5");
}

TEST(FlashCuda, UnalignedTensorsAreRefusedNotMiscomputed) {
  LLM_REQUIRE_GPU();
  auto plugin = load_flash();
  ASSERT_NE(plugin, nullptr);
  std::mt19937 rng(1);
  Case tc{64, 4, 2, {3, 1}, {5, 9}};
  tc.dtype = LLM_DTYPE_BF16;
  tc.pad = 4;  // q/out token stride 260: not a multiple of 8 elements
  Problem problem(tc, rng);
  Context ctx(*plugin, problem.shape());
  ASSERT_EQ(ctx.status(), LLM_OK) << plugin->iface().last_error(nullptr);
  Stream stream;
  EXPECT_EQ(ctx.call(problem.args(stream.get()), false), LLM_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(ctx.error()).find("multiple of 8"), std::string::npos) << ctx.error();
  llm_attention_args a = problem.args(stream.get());
  a.q = nullptr;
  EXPECT_EQ(ctx.call(a, false), LLM_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(ctx.error()).find("NULL"), std::string::npos) << ctx.error();
}

}  // namespace
}  // namespace llm
