// The GPU forward pass against the CPU fp32 one on stories260K, with mha_cuda serving attention.
#include "llama_cuda.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_test_support.h"
#include "engine.h"
#include "error.h"
#include "model_export.h"
#include "test_support.h"

namespace llm {
namespace {

RunConfig gpu_config(const std::string& model, const std::string& dtype) {
  RunConfig c;
  c.model = model;
  c.tokenizer = test::model_path("tok512.bin");
  c.device = "cuda";
  c.dtype = dtype;
  c.backend_order = {"mha_cuda"};
  c.plugin_dirs = {LLM_PLUGIN_DIR, LLM_TEST_PLUGIN_DIR};
  return c;
}

RunConfig cpu_config(const std::string& model) {
  RunConfig c = gpu_config(model, "fp32");
  c.device = "cpu";
  c.backend_order = {"mha_cpu"};
  c.threads = 2;
  return c;
}

// A copy of the llama2.c checkpoint `fp32` in `dir` with every weight after the header NaN: every logit is
// then NaN, and argmax has nothing to pick.
std::string nan_copy(const std::string& fp32, test::TempDir& dir) {
  const std::string path = dir.file("nan.bin");
  std::filesystem::copy_file(fp32, path);
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  const auto size = static_cast<size_t>(std::filesystem::file_size(path));
  const size_t header = 7 * sizeof(int32_t);
  const std::vector<float> nan((size - header) / sizeof(float), std::nanf(""));
  f.seekp(static_cast<std::streamoff>(header));
  f.write(reinterpret_cast<const char*>(nan.data()), static_cast<std::streamsize>(nan.size() * sizeof(float)));
  return path;
}

// A bf16 engine of `model` with flash_cuda alone, the tokenizer tok512.
RunConfig flash_bf16_config(const std::string& model, const std::string& tokenizer) {
  RunConfig c = gpu_config(model, "bf16");
  c.tokenizer = tokenizer;
  c.backend_order = {"flash_cuda"};
  return c;
}

// The index of the first float of `b` whose bits differ from `a`'s, `a.size()` where none does; every float of
// `b` finite, and the sizes equal.
size_t first_differing_bits(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  EXPECT_TRUE(std::all_of(b.begin(), b.end(), [](float v) { return std::isfinite(v); })) << "a logit is not finite";
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return i;
  return a.size();
}

TEST(LlamaCuda, LogitsMatchTheCpuForEachDtype) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  Engine cpu(cpu_config(model));
  // fp32: the same arithmetic up to summation order; bf16/fp16: weights, activations and cache rounded.
  for (auto [dtype, bound] : {std::pair{"fp32", 1e-5}, {"fp16", 1e-2}, {"bf16", 3e-2}}) {
    Engine gpu(gpu_config(model, dtype));
    Engine fresh_cpu(cpu_config(model));
    const double err = test::max_logit_error(gpu, fresh_cpu, 40);
    std::printf("GPU %s vs CPU fp32 logits, 40 steps: max relative L2 error %.3g (bound %.0e)\n", dtype, err, bound);
    EXPECT_LT(err, bound) << dtype;
  }
}

TEST(LlamaCuda, Fp32GreedyTextEqualsTheCpu) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  GenerationOptions o;
  o.max_tokens = 200;
  o.stop_at_eos = false;
  auto cpu = Engine(cpu_config(model)).generate("Once upon a time", o);
  Engine gpu(gpu_config(model, "fp32"));
  auto r = gpu.generate("Once upon a time", o);
  EXPECT_EQ(r.tokens, cpu.tokens);
  EXPECT_EQ(gpu.device(), "cuda");
  EXPECT_EQ(r.backends, std::vector<std::string>{"mha_cuda"});
}

TEST(LlamaCuda, GraphReplayEqualsEagerAndTheAllocatorStopsGrowing) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  GenerationOptions o;
  o.max_tokens = 300;
  o.stop_at_eos = false;
  Engine eager(gpu_config(model, "bf16")), graphed(gpu_config(model, "bf16"));
  auto* eager_model = dynamic_cast<cuda::LlamaCuda*>(&eager.model());
  auto* graph_model = dynamic_cast<cuda::LlamaCuda*>(&graphed.model());
  ASSERT_TRUE(eager_model && graph_model);
  eager_model->set_use_graphs(false);
  auto a = eager.generate("Once upon a time", o);
  // warm-up run, then 1000 more decode steps must not call cudaMalloc again
  auto b = graphed.generate("Once upon a time", o);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_GT(graph_model->graph_replays(), 250);
  const auto before = graph_model->allocator().stats();
  for (int i = 0; i < 4; ++i) graphed.generate("The little dog", o);
  const auto after = graph_model->allocator().stats();
  EXPECT_EQ(after.cuda_malloc_calls, before.cuda_malloc_calls) << graph_model->allocator().stats_line();
  EXPECT_EQ(after.bytes_in_use, before.bytes_in_use);
}

TEST(LlamaCuda, LogitsWithoutANumberAreAClearErrorNotAToken) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(fp32, "stories260K.bin");
  test::TempDir dir;
  const std::string path = nan_copy(fp32, dir);
  GenerationOptions o;
  o.max_tokens = 4;
  EXPECT_THAT([&] { Engine(gpu_config(path, "fp32")).generate("Once upon a time", o); },
              testing::ThrowsMessage<Error>(testing::HasSubstr("hold no number to pick: NaN or infinite throughout")));
  o.sampling.temperature = 0.8f;  // sampled on the device: the same check of the id copied back
  o.sampling.top_p = 0.9f;
  EXPECT_THAT(
      [&] { Engine(gpu_config(path, "fp32")).generate("Once upon a time", o); },
      testing::ThrowsMessage<Error>(testing::HasSubstr("hold no number to sample from: NaN or infinite throughout")));
}

// Greedy steps run back to back in one graph, each taking the ids the step before picked on the device,
// give the ids of single steps: two sequences, 2 to 8 steps a run, flash_cuda in bf16 and mha_cuda in fp32;
// generation with runs of 8 gives the text of single steps, and the steps count as graph replays.
TEST(LlamaCuda, GreedyStepsInOneGraphGiveTheIdsOfSingleSteps) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  for (auto [dtype, backend] : {std::pair{"bf16", "flash_cuda"}, {"fp32", "mha_cuda"}}) {
    RunConfig c = gpu_config(model, dtype);
    c.backend_order = {backend};
    Engine runs(c, 2), single(c, 2);
    auto* run_model = dynamic_cast<cuda::LlamaCuda*>(&runs.model());
    ASSERT_NE(run_model, nullptr);
    const auto p1 = runs.tokenizer().encode("The little dog", true), p2 = runs.tokenizer().encode("Once upon", true);
    int first[2];
    runs.model().forward_argmax({SequenceChunk{0, 0, p1}, SequenceChunk{1, 0, p2}}, first);
    single.model().forward_argmax({SequenceChunk{0, 0, p1}, SequenceChunk{1, 0, p2}}, first);
    int pos[2] = {static_cast<int>(p1.size()), static_cast<int>(p2.size())}, tok[2] = {first[0], first[1]};
    for (int steps : {2, 5, 8, 3}) {
      const int replays = run_model->graph_replays();
      std::vector<int> ids(2 * steps);
      runs.model().forward_argmax_steps({SequenceChunk{0, pos[0], {tok[0]}}, SequenceChunk{1, pos[1], {tok[1]}}}, steps,
                                        ids.data());
      EXPECT_EQ(run_model->graph_replays(), replays + steps) << dtype << ": the steps ran from one graph";
      for (int s = 0; s < steps; ++s) {
        int next[2];
        single.model().forward_argmax({SequenceChunk{0, pos[0], {tok[0]}}, SequenceChunk{1, pos[1], {tok[1]}}}, next);
        EXPECT_EQ(ids[2 * s], next[0]) << dtype << " run of " << steps << ", step " << s;
        EXPECT_EQ(ids[2 * s + 1], next[1]) << dtype << " run of " << steps << ", step " << s;
        for (int k = 0; k < 2; ++k) ++pos[k], tok[k] = next[k];
      }
    }
    GenerationOptions o;
    o.max_tokens = 90;
    o.stop_at_eos = false;
    o.steps_ahead = 1;
    const auto one = Engine(c).generate("Once upon a time", o);
    o.steps_ahead = 8;
    const auto eight = Engine(c).generate("Once upon a time", o);
    EXPECT_EQ(eight.tokens, one.tokens) << dtype;
  }
}

// The pick folded into the classifier (the default where the classifier takes the CUDA-core kernel: for
// stories260K, narrow, up to four sequences, in bf16 and fp32) gives the ids of argmax_rows after the
// classifier, in runs of steps from one graph, each step's embedding reading the keys of the step before,
// and in single steps.
TEST(LlamaCuda, TheArgmaxFoldedIntoTheClassifierPicksTheIdsOfArgmaxRows) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  for (auto [dtype, backend, seqs] :
       {std::tuple{"bf16", "flash_cuda", 1}, {"fp32", "mha_cuda", 2}, {"bf16", "flash_cuda", 2}}) {
    RunConfig c = gpu_config(model, dtype);
    c.backend_order = {backend};
    Engine folded(c, 2), plain(c, 2);
    auto* folding = dynamic_cast<cuda::LlamaCuda*>(&folded.model());
    auto* argmax_rows = dynamic_cast<cuda::LlamaCuda*>(&plain.model());
    ASSERT_NE(folding, nullptr);
    ASSERT_NE(argmax_rows, nullptr);
    argmax_rows->set_fold_argmax(false);
    const std::string what = std::string(dtype) + ", " + std::to_string(seqs) + " sequence(s)";
    EXPECT_TRUE(folding->folds_argmax(seqs, seqs)) << what;
    EXPECT_TRUE(folding->folds_argmax(cuda::kGemvCudaCoreMaxTokens, cuda::kGemvCudaCoreMaxTokens)) << what;
    // one more: bf16 takes the tensor-core kernel, fp32 cuBLAS
    EXPECT_FALSE(folding->folds_argmax(cuda::kGemvCudaCoreMaxTokens + 1, cuda::kGemvCudaCoreMaxTokens + 1)) << what;
    EXPECT_FALSE(argmax_rows->folds_argmax(seqs, seqs)) << what;
    const std::vector<std::vector<int>> prompts = {folded.tokenizer().encode("The little dog", true),
                                                   folded.tokenizer().encode("Once upon", true)};
    std::vector<SequenceChunk> prefill;
    for (int k = 0; k < seqs; ++k) prefill.push_back(SequenceChunk{k, 0, prompts[k]});
    std::vector<int> tok(seqs), again(seqs), pos(seqs);
    folded.model().forward_argmax(prefill, tok.data());
    plain.model().forward_argmax(prefill, again.data());
    EXPECT_EQ(tok, again) << what;
    for (int k = 0; k < seqs; ++k) pos[k] = static_cast<int>(prompts[k].size());
    auto step_chunks = [&] {
      std::vector<SequenceChunk> chunks;
      for (int k = 0; k < seqs; ++k) chunks.push_back(SequenceChunk{k, pos[k], {tok[k]}});
      return chunks;
    };
    for (int steps : {1, 4, 8, 1, 3}) {
      std::vector<int> a(seqs * steps), b(seqs * steps);
      if (steps == 1) {
        folded.model().forward_argmax(step_chunks(), a.data());
        plain.model().forward_argmax(step_chunks(), b.data());
      } else {
        folded.model().forward_argmax_steps(step_chunks(), steps, a.data());
        plain.model().forward_argmax_steps(step_chunks(), steps, b.data());
      }
      EXPECT_EQ(a, b) << what << ", " << steps << " step(s) from position " << pos[0];
      for (int k = 0; k < seqs; ++k) pos[k] += steps, tok[k] = a[(steps - 1) * seqs + k];
    }
  }
}

// A model's very first call is a captured run of steps, so its backend's context (which allocates a
// workspace) does not exist yet: the chain opens it before the capture, where a capturing stream would
// refuse the allocation and the backend would be wrongly left for dead. The run comes from the graph and
// gives the ids of single steps.
TEST(LlamaCuda, ARunOfStepsAsAFreshModelsFirstCallIsCaptured) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  for (auto [dtype, backend] : {std::pair{"bf16", "flash_cuda"}, {"fp32", "mha_cuda"}}) {
    RunConfig c = gpu_config(model, dtype);
    c.backend_order = {backend};
    Engine fresh(c), single(c);
    auto* fresh_model = dynamic_cast<cuda::LlamaCuda*>(&fresh.model());
    ASSERT_NE(fresh_model, nullptr);
    std::vector<int> ids(4);
    fresh.model().forward_argmax_steps({SequenceChunk{0, 0, {1}}}, 4, ids.data());
    EXPECT_EQ(fresh_model->graph_replays(), 4) << dtype << ": the steps ran from one graph";
    EXPECT_EQ(fresh.model().attention_backend(), backend) << dtype;
    int tok = 1;
    for (int s = 0; s < 4; ++s) {
      int next = -1;
      single.model().forward_argmax({SequenceChunk{0, s, {tok}}}, &next);
      EXPECT_EQ(ids[s], next) << dtype << ", step " << s;
      tok = next;
    }
  }
}

// An id picked on the device from logits with no number in them reaches the next step of a run as a NaN
// embedding (not an out-of-range read), and the run is an error naming the sequence and the step.
TEST(LlamaCuda, AGreedyRunOverLogitsWithoutANumberIsAClearError) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(fp32, "stories260K.bin");
  test::TempDir dir;
  const std::string path = nan_copy(fp32, dir);
  Engine engine(gpu_config(path, "fp32"));
  std::vector<int> ids(4);
  EXPECT_THAT(
      [&] {
        engine.model().forward_argmax_steps({SequenceChunk{0, 0, {1}}}, 4, ids.data());
      },
      testing::ThrowsMessage<Error>(
          testing::HasSubstr("sequence 0 (slot 0) at step 1 of 4 hold no number to pick: NaN or infinite throughout")));
}

// Sampling steps pick on the device (LlamaCuda::forward_sample) with each sequence's own uniforms: in fp32
// the GPU's sampled text is the CPU's, for temperature alone and with top-k and top-p, two prompts decoded
// together; in bf16 it is a text of the requested length.
TEST(LlamaCuda, SampledTextOnTheGpuIsTheCpus) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog"};
  for (const SamplingParams& p : {SamplingParams{1.0f, 0, 1.0f, 3}, SamplingParams{0.8f, 20, 0.9f, 7}}) {
    GenerationOptions o;
    o.max_tokens = 60;
    o.stop_at_eos = false;
    o.sampling = p;
    const auto cpu = Engine(cpu_config(model), 2).generate_batch(prompts, o);
    const auto gpu = Engine(gpu_config(model, "fp32"), 2).generate_batch(prompts, o);
    for (size_t i = 0; i < prompts.size(); ++i)
      EXPECT_EQ(gpu[i].tokens, cpu[i].tokens) << prompts[i] << " T " << p.temperature << " top_k " << p.top_k;
    const auto bf16 = Engine(gpu_config(model, "bf16"), 2).generate_batch(prompts, o);
    for (const auto& r : bf16) EXPECT_EQ(r.tokens.size(), 60u);
  }
}

// LLM_STEPS_AHEAD sets the greedy run length (1 to 8); another value is an error naming it.
TEST(LlamaCuda, StepsAheadComeFromTheEnvironmentAndABadValueIsAClearError) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  for (const char* bad : {"0", "9", "x", "4 steps"}) {
    ::setenv("LLM_STEPS_AHEAD", bad, 1);
    EXPECT_THAT([&] { Engine(gpu_config(model, "fp32")); },
                testing::ThrowsMessage<Error>(testing::HasSubstr(std::string("LLM_STEPS_AHEAD='") + bad +
                                                                 "': expected greedy decode steps per graph "
                                                                 "launch, 1 to 8")));
  }
  ::setenv("LLM_STEPS_AHEAD", "3", 1);
  Engine engine(gpu_config(model, "fp32"));
  ::unsetenv("LLM_STEPS_AHEAD");
  EXPECT_EQ(engine.model().greedy_steps_ahead(), 3);
  EXPECT_EQ(Engine(gpu_config(model, "fp32")).model().greedy_steps_ahead(), cuda::LlamaCuda::kDefaultStepsAhead)
      << "the default unless asked for";
  ::setenv("LLM_STEPS_AHEAD", "1", 1);
  Engine single(gpu_config(model, "fp32"));
  ::unsetenv("LLM_STEPS_AHEAD");
  EXPECT_EQ(single.model().greedy_steps_ahead(), 1) << "1 turns runs off";
}

TEST(LlamaCuda, PreparedNormComesFromTheEnvironmentAndABadValueIsAClearError) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  for (const char* bad : {"2", "off", "yes"}) {
    ::setenv("LLM_PREPARED_NORM", bad, 1);
    EXPECT_THAT([&] { Engine(gpu_config(model, "fp32")); },
                testing::ThrowsMessage<Error>(
                    testing::HasSubstr(std::string("LLM_PREPARED_NORM='") + bad + "': expected 0 or 1")));
  }
  ::setenv("LLM_PREPARED_NORM", "0", 1);
  Engine off(gpu_config(model, "fp32"));
  ::unsetenv("LLM_PREPARED_NORM");
  EXPECT_FALSE(dynamic_cast<cuda::LlamaCuda&>(off.model()).prepare_norm());
  Engine on(gpu_config(model, "fp32"));
  EXPECT_TRUE(dynamic_cast<cuda::LlamaCuda&>(on.model()).prepare_norm()) << "on unless asked otherwise";
}

// Where decode attention overlaps the products by default: the three shapes in bf16 (a layer's
// q/k/v and output weights), as measured (llama_cuda.cpp). No GPU needed.
TEST(LlamaCuda, DecodeOverlapsWhereItMeasuredAGain) {
  auto bytes = [](double rows, double cols) { return 2.0 * rows * cols; };
  const uint32_t start = LLM_OVERLAP_EARLY_START, both = LLM_OVERLAP_EARLY_START | LLM_OVERLAP_EARLY_NEXT;
  // stories110M: dim 768, 12 heads (3.5 MB of q/k/v): no overlap
  EXPECT_EQ(cuda::auto_decode_overlap(bytes(3 * 768, 768), bytes(768, 768), 1, true), 0u);
  // TinyLlama: dim 2048, 4 kv heads of 64 (10.5 MB), wo 8.4 MB: both at one token, start at 8
  const double tiny_qkv = bytes(2048 + 2 * 256, 2048), tiny_wo = bytes(2048, 2048);
  EXPECT_EQ(cuda::auto_decode_overlap(tiny_qkv, tiny_wo, 1, true), both);
  EXPECT_EQ(cuda::auto_decode_overlap(tiny_qkv, tiny_wo, 8, false), start);
  EXPECT_EQ(cuda::auto_decode_overlap(tiny_qkv, tiny_wo, 1, false), start) << "tensor-core products at one token";
  // Llama-2-7B: dim 4096 (101 MB), wo 33.5 MB: start only
  EXPECT_EQ(cuda::auto_decode_overlap(bytes(3 * 4096, 4096), bytes(4096, 4096), 1, true), start);
  EXPECT_EQ(cuda::auto_decode_overlap(bytes(3 * 4096, 4096), bytes(4096, 4096), 8, false), start);
}

TEST(LlamaCuda, DecodeOverlapComesFromTheEnvironmentAndABadValueIsAClearError) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  ::setenv("LLM_DECODE_OVERLAP", "early", 1);
  EXPECT_THAT([&] { Engine(gpu_config(model, "fp32")); },
              testing::ThrowsMessage<Error>(
                  testing::HasSubstr("LLM_DECODE_OVERLAP='early': expected auto, off, start, next or start+next")));
  ::setenv("LLM_DECODE_OVERLAP", "start+next", 1);
  Engine forced(gpu_config(model, "fp32"));
  ::unsetenv("LLM_DECODE_OVERLAP");
  EXPECT_EQ(dynamic_cast<cuda::LlamaCuda&>(forced.model()).decode_overlap(1, true),
            LLM_OVERLAP_EARLY_START | LLM_OVERLAP_EARLY_NEXT);
  Engine automatic(gpu_config(model, "fp32"));
  EXPECT_EQ(dynamic_cast<cuda::LlamaCuda&>(automatic.model()).decode_overlap(1, true), 0u)
      << "stories260K's products are far too small to hide anything";
}

// flash_cuda decode overlapping the products around it (launched early, copying its cached tiles before it
// waits on the q/k/v product, which writes q and the new token's K and V; letting the output product
// start): the same logits, bit for bit, as plain stream order, along 100 decode steps replayed from the
// graph, for one sequence and for two of different lengths. A random GQA model with 64-wide heads, which
// decode serves through the copy engine. A copy that read q or the new entries before they were written,
// or a product that read attention's output early, would change the bits.
TEST(LlamaCuda, DecodeOverlappingTheProductsGivesTheSameLogits) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(tokenizer, "tok512.bin");
  test::TempDir dir;
  const std::string path = test::random_gqa_model(dir, "gqa_random.bin", 1408, 12);
  const int vocab = 512;
  auto run = [&](int overlap, int seqs, int* replays) {
    Engine engine(flash_bf16_config(path, tokenizer), 2);
    auto& model = dynamic_cast<cuda::LlamaCuda&>(engine.model());
    model.set_decode_overlap(overlap);
    std::vector<int> prompts[2] = {std::vector<int>(37), std::vector<int>(100)};
    for (size_t i = 0; i < prompts[0].size(); ++i) prompts[0][i] = static_cast<int>(1 + i * 7 % 511);
    for (size_t i = 0; i < prompts[1].size(); ++i) prompts[1][i] = static_cast<int>(1 + i * 13 % 511);
    std::vector<float> all;
    int tok[2] = {0, 0}, pos[2] = {37, 100};
    auto take = [&](const float* logits) {
      all.insert(all.end(), logits, logits + seqs * vocab);
      for (int k = 0; k < seqs; ++k) tok[k] = argmax(logits + k * vocab, vocab);
    };
    std::vector<SequenceChunk> chunks;
    for (int k = 0; k < seqs; ++k) chunks.push_back(SequenceChunk{k, 0, prompts[k]});
    take(model.forward(chunks));
    for (int step = 0; step < 100; ++step) {
      for (int k = 0; k < seqs; ++k) chunks[k] = SequenceChunk{k, pos[k]++, {tok[k]}};
      take(model.forward(chunks));
    }
    *replays = model.graph_replays();
    return all;
  };
  for (int seqs : {1, 2}) {
    int plain_replays = 0;
    const std::vector<float> plain = run(0, seqs, &plain_replays);
    for (int overlap : {LLM_OVERLAP_EARLY_START, LLM_OVERLAP_EARLY_START | LLM_OVERLAP_EARLY_NEXT}) {
      SCOPED_TRACE("sequences " + std::to_string(seqs) + ", overlap " + std::to_string(overlap));
      int replays = 0;
      const std::vector<float> early = run(overlap, seqs, &replays);
      EXPECT_GE(replays, 99) << "the decode steps were replayed from a graph";
      const size_t first = first_differing_bits(plain, early);
      EXPECT_EQ(first, plain.size()) << "first at call " << first / (seqs * vocab) << " (of 101), sequence "
                                     << first / vocab % seqs;
    }
  }
}

// A random model 2,048 wide (TinyLlama's rows: one batch of 8 chunks a lane) stages its SwiGLU's rows in one-token
// steps (gemv.h), and its logits along a prompt and 60 greedy steps, replayed from graphs, are the bits of
// the same steps without staging.
TEST(LlamaCuda, StagedSwigluGivesTheLogitsOfThePlainKernel) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(tokenizer, "tok512.bin");
  if (cuda::probe_device(0).compute_major < 9)
    GTEST_SKIP() << "the staged SwiGLU needs the copy engine's bulk copies (compute capability 9.0)";
  test::TempDir dir;
  ModelConfig mc;
  mc.dim = 2048, mc.hidden_dim = 4400, mc.n_layers = 2, mc.n_heads = 32, mc.n_kv_heads = 4;
  mc.vocab_size = 512, mc.max_seq_len = 256;
  const std::string path = dir.file("wide_random.bin");
  write_checkpoint(path, mc, CheckpointFormat::V1F32, random_weights(mc, 20261203));
  const int vocab = mc.vocab_size;
  auto run = [&](bool stage, int* replays) {
    Engine engine(flash_bf16_config(path, tokenizer), 1);
    auto& model = dynamic_cast<cuda::LlamaCuda&>(engine.model());
    model.set_stage_swiglu(stage);
    EXPECT_TRUE(
        cuda::gemv_stages_swiglu(cuda::gemv_resolve(model.gemv_kernel(), DType::BF16, mc.dim, 1), DType::BF16, mc.dim));
    std::vector<int> prompt(23);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int>(1 + i * 11 % 511);
    std::vector<float> all;
    const float* logits = model.forward({SequenceChunk{0, 0, prompt}});
    all.insert(all.end(), logits, logits + vocab);
    int pos = static_cast<int>(prompt.size());
    for (int step = 0; step < 60; ++step) {
      logits = model.forward({SequenceChunk{0, pos++, {argmax(logits, vocab)}}});
      all.insert(all.end(), logits, logits + vocab);
    }
    *replays = model.graph_replays();
    return all;
  };
  int plain_replays = 0, staged_replays = 0;
  const std::vector<float> plain = run(false, &plain_replays), staged = run(true, &staged_replays);
  EXPECT_GE(staged_replays, 59) << "the decode steps were replayed from a graph";
  const size_t first = first_differing_bits(plain, staged);
  EXPECT_EQ(first, plain.size()) << "first at call " << first / vocab << " (of 61)";
}

TEST(LlamaCuda, Int8CheckpointRunsOnTheGpu) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(q80, "stories260K_q80.bin");
  LLM_REQUIRE_MODEL(fp32, "stories260K.bin");
  GenerationOptions o;
  o.max_tokens = 40;
  // Q8_0 is dequantized on upload: the GPU sees the very values the fp32 file holds (it was made from them).
  auto a = Engine(gpu_config(q80, "fp32")).generate("Once upon a time", o);
  auto b = Engine(gpu_config(fp32, "fp32")).generate("Once upon a time", o);
  EXPECT_EQ(a.tokens, b.tokens);
}

TEST(LlamaCuda, BatchedGenerationMatchesEachPromptAlone) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog", "Tom had a toy car. He",
                                            "One day, a big red ball", "Lily and Ben"};
  GenerationOptions o;
  o.max_tokens = 80;
  Engine batch(gpu_config(model, "fp32"), static_cast<int>(prompts.size()));
  auto results = batch.generate_batch(prompts, o);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto alone = Engine(gpu_config(model, "fp32")).generate(prompts[i], o);
    EXPECT_EQ(results[i].tokens, alone.tokens) << prompts[i];
  }
}

// Fallback across devices: the GPU model's attention served by mha_cpu through the host bridge.
TEST(LlamaCuda, OnlyMhaCpuServesAGpuModelWithTheSameText) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  GenerationOptions o;
  o.max_tokens = 120;
  o.stop_at_eos = false;
  auto ref = Engine(gpu_config(model, "fp32")).generate("Once upon a time", o);
  RunConfig c = gpu_config(model, "fp32");
  c.backend_order = {"mha_cpu"};
  Engine engine(c);
  auto r = engine.generate("Once upon a time", o);
  EXPECT_EQ(engine.device(), "cuda");
  EXPECT_EQ(r.backends, std::vector<std::string>{"mha_cpu"});
  EXPECT_EQ(r.tokens, ref.tokens);
}

TEST(LlamaCuda, MhaCudaFailingMidGenerationFallsBackToTheCpuWithTheSameText) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  GenerationOptions o;
  o.max_tokens = 120;
  o.stop_at_eos = false;
  for (const char* dtype : {"fp32", "bf16"}) {
    auto ref = Engine(gpu_config(model, dtype)).generate("Once upon a time", o);
    for (const char* drill : {"mha_cuda@1", "mha_cuda@3", "mha_cuda@200"}) {  // first call, mid-prefill, mid-decode
      RunConfig c = gpu_config(model, dtype);
      c.backend_order = {"mha_cuda", "mha_cpu"};
      c.fail_backend = {drill};
      Engine engine(c);
      auto r = engine.generate("Once upon a time", o);
      EXPECT_EQ(engine.model().attention_backend(), "mha_cpu") << dtype << " " << drill;
      // fp32: the same numbers up to summation order. bf16: the CPU reads the same bf16 cache and rounds its
      // output to bf16 as mha_cuda does, so the text matches too unless a step is a near tie.
      EXPECT_EQ(r.tokens, ref.tokens) << dtype << " " << drill;
    }
  }
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// flash_cuda end to end on stories260K (head_dim 8 runs on the zero-padded 16-wide kernels): flash_cuda
// serves every call; along mha_cuda's greedy path its logits stay within the bound the GPU paths have
// against the CPU (bf16 3e-2, fp16 1e-2) and its argmax equals mha_cuda's except at ties within that
// error; the generated text is compared and its common prefix reported.
TEST(LlamaCuda, FlashCudaGivesTheMhaCudaTextAndLogits) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  GenerationOptions o;
  o.max_tokens = 200;
  o.stop_at_eos = false;
  for (auto [dtype, bound] : {std::pair{"bf16", 3e-2}, {"fp16", 1e-2}}) {
    RunConfig fc = gpu_config(model, dtype);
    fc.backend_order = {"flash_cuda"};
    Engine mha(gpu_config(model, dtype)), flash(fc);
    const test::PathComparison c = test::compare_along_path(flash, mha, 200);
    std::printf(
        "%s: flash_cuda vs mha_cuda along 200 greedy steps: max relative L2 logit error %.3e (bound %.0e), "
        "argmax differs at %d step(s), %d not explained by a tie\n",
        dtype, c.max_rel_err, bound, c.argmax_differs, c.unexplained);
    EXPECT_LT(c.max_rel_err, bound) << dtype;
    EXPECT_EQ(c.unexplained, 0) << dtype;
    const auto a = Engine(gpu_config(model, dtype)).generate("Once upon a time", o);
    const auto b = Engine(fc).generate("Once upon a time", o);
    EXPECT_EQ(b.backends, std::vector<std::string>{"flash_cuda"}) << dtype;
    size_t same = 0;
    while (same < a.tokens.size() && same < b.tokens.size() && a.tokens[same] == b.tokens[same]) ++same;
    std::printf("%s: free-running greedy text: %zu of %zu tokens equal before the first difference\n", dtype, same,
                a.tokens.size());
    if (c.argmax_differs == 0) {
      EXPECT_EQ(b.tokens, a.tokens) << dtype;
    }
  }
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// The fused matrix-vector kernels (decode steps of up to kGemvMaxTokens tokens) against cuBLAS on the
// same model: logits along the cuBLAS path's greedy steps within the dtype's bound (fp32: summation order
// only), argmax equal except at ties within the measured error, and batched greedy text (3 prompts: the
// 3-token kernels, then 2 and 1 as prompts stop) equal in fp32.
TEST(LlamaCuda, GemvKernelsMatchCublas) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  for (auto [dtype, bound] : {std::pair{"fp32", 1e-5}, {"fp16", 1e-2}, {"bf16", 3e-2}}) {
    Engine fused(gpu_config(model, dtype)), cublas(gpu_config(model, dtype));
    auto* m = dynamic_cast<cuda::LlamaCuda*>(&cublas.model());
    ASSERT_TRUE(m);
    m->set_gemv_max_tokens(0);
    const test::PathComparison c = test::compare_along_path(fused, cublas, 120);
    std::printf(
        "%s: fused GEMV vs cuBLAS along 120 greedy steps: max relative L2 logit error %.3e (bound %.0e), "
        "argmax differs at %d step(s), %d not explained by a tie\n",
        dtype, c.max_rel_err, bound, c.argmax_differs, c.unexplained);
    EXPECT_LT(c.max_rel_err, bound) << dtype;
    EXPECT_EQ(c.unexplained, 0) << dtype;
  }
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog", "Lily and Ben"};
  GenerationOptions o;
  o.max_tokens = 60;
  Engine fused(gpu_config(model, "fp32"), 3), cublas(gpu_config(model, "fp32"), 3);
  dynamic_cast<cuda::LlamaCuda&>(cublas.model()).set_gemv_max_tokens(0);
  const auto a = fused.generate_batch(prompts, o), b = cublas.generate_batch(prompts, o);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(a[i].tokens, b[i].tokens) << prompts[i];
}

// At one token the residual adds prepare the next RMSNorm's input for the products after them (gemv.h);
// with that off the products norm the fp32 residual themselves. Same logits along a greedy path, within
// the dtype's rounding of the prepared input (fp32: summation order only), in graphs and out of them.
TEST(LlamaCuda, PreparedNormGivesTheLogitsOfTheNormInTheProduct) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  for (auto [dtype, bound] : {std::pair{"fp32", 1e-5}, {"fp16", 1e-2}, {"bf16", 3e-2}}) {
    for (bool graphs : {true, false}) {
      Engine prepared(gpu_config(model, dtype)), in_product(gpu_config(model, dtype));
      auto& a = dynamic_cast<cuda::LlamaCuda&>(prepared.model());
      auto& b = dynamic_cast<cuda::LlamaCuda&>(in_product.model());
      b.set_prepare_norm(false);
      a.set_use_graphs(graphs), b.set_use_graphs(graphs);
      const test::PathComparison c = test::compare_along_path(prepared, in_product, 120);
      std::printf(
          "%s%s: prepared norm vs norm in the product, 120 greedy steps: max relative L2 logit error %.3e "
          "(bound %.0e), argmax differs at %d step(s), %d not explained by a tie\n",
          dtype, graphs ? "" : " (no graphs)", c.max_rel_err, bound, c.argmax_differs, c.unexplained);
      EXPECT_LT(c.max_rel_err, bound) << dtype;
      EXPECT_EQ(c.unexplained, 0) << dtype;
    }
  }
}

// At several sequences the tensor-core products take the norm prepared by the residual adds before them
// too (no RMSNorm launches); with that off each norm is a launch of its own. Same logits for every sequence
// along 40 decode steps fed the launches' greedy tokens, within the dtype's rounding of the prepared input,
// in graphs and out, at 3, 8 and 12 sequences (one tile of tokens cut short, a full one, two).
TEST(LlamaCuda, PreparedNormAtSeveralSequencesGivesTheLogitsOfTheNormLaunches) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  const int vocab = 512, steps = 40;
  for (auto [dtype, bound] : {std::pair{"fp16", 1e-2}, {"bf16", 3e-2}})
    for (int seqs : {3, 8, 12})
      for (bool graphs : {true, false}) {
        SCOPED_TRACE(std::string(dtype) + ", " + std::to_string(seqs) + " sequences" + (graphs ? "" : ", no graphs"));
        Engine prepared(gpu_config(model, dtype), seqs), launches(gpu_config(model, dtype), seqs);
        auto& a = dynamic_cast<cuda::LlamaCuda&>(prepared.model());
        auto& b = dynamic_cast<cuda::LlamaCuda&>(launches.model());
        b.set_prepare_norm(false);
        // the tensor-core kernel's prepared norm (Auto takes the CUDA-core kernel for this narrow model up to
        // 4 sequences, with the norm from the fp32 residual)
        a.set_gemv_kernel(cuda::GemvKernel::TensorCore), b.set_gemv_kernel(cuda::GemvKernel::TensorCore);
        a.set_use_graphs(graphs), b.set_use_graphs(graphs);
        std::vector<SequenceChunk> chunks;
        std::vector<int> pos;
        for (int k = 0; k < seqs; ++k) {
          std::vector<int> prompt(5 + 3 * k);
          for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int>(1 + i * (k + 3) % 511);
          pos.push_back(static_cast<int>(prompt.size()));
          chunks.push_back(SequenceChunk{k, 0, prompt});
        }
        test::PathComparison c;
        for (int step = 0; step <= steps; ++step) {
          const float* lb = b.forward(chunks);
          const std::vector<float> want(lb, lb + seqs * vocab);
          const float* got = a.forward(chunks);
          for (int k = 0; k < seqs; ++k) {
            const int next = c.add(&want[k * vocab], got + k * vocab, vocab);
            ASSERT_GE(next, 0) << "a logit not finite at step " << step << ", sequence " << k;
            chunks[k] = SequenceChunk{k, pos[k]++, {next}};
          }
        }
        std::printf(
            "%s, %d sequences%s: prepared norm vs RMSNorm launches, %d steps: max relative L2 logit error "
            "%.3e (bound %.0e), argmax differs %d, not explained by a tie %d\n",
            dtype, seqs, graphs ? "" : " (no graphs)", steps, c.max_rel_err, bound, c.argmax_differs, c.unexplained);
        EXPECT_LT(c.max_rel_err, bound);
        EXPECT_EQ(c.unexplained, 0);
      }
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// The GPU forward pass reads the same loaded weights whatever the file: stories260K as a GGUF (with its
// own vocabulary) and as a Hugging Face directory (q/k rows in HF's rotary halves) give the CPU fp32
// file's logits on the GPU, near-exactly in fp32 and within the GPU bf16 bound.
TEST(LlamaCuda, GgufAndHuggingFaceModelsRunOnTheGpu) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  test::TempDir dir;
  const auto ck = Checkpoint::open(model);
  const std::string files[] = {test::stories_gguf(dir, gguf::TensorType::F32, model),
                               test::export_hf(dir, "hf", *ck, {})};
  for (const std::string& path : files)
    for (auto [dtype, bound] : {std::pair{"fp32", 1e-5}, {"bf16", 3e-2}}) {
      RunConfig g = gpu_config(path, dtype);
      g.tokenizer = "";  // the file's own
      Engine gpu(g), cpu(cpu_config(model));
      const double err = test::max_logit_error(gpu, cpu, 40);
      std::printf("%s on the GPU (%s) vs the llama2.c file on the CPU: max relative L2 logit error %.3g (bound %.0e)\n",
                  path.c_str(), dtype, err, bound);
      EXPECT_LT(err, bound) << path << " " << dtype;
    }
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// Both engines along the reference engine's batched greedy path: every prompt a sequence of one batch,
// prefilled together, then `steps` decode steps of one token per sequence, each engine fed the
// reference's argmax (teacher-forced, as compare_along_path). Errors and ties as there, over all
// sequences and steps.
test::PathComparison compare_batch_along_path(Engine& test, Engine& ref, const std::vector<std::string>& prompts,
                                              int steps) {
  const int vocab = ref.model().config().vocab_size, n = static_cast<int>(prompts.size());
  std::vector<SequenceChunk> chunks;
  for (int s = 0; s < n; ++s) chunks.push_back(SequenceChunk{s, 0, ref.tokenizer().encode(prompts[s], true)});
  test::PathComparison c;
  for (int step = 0; step <= steps; ++step) {
    const float* lr = ref.model().forward(chunks);
    const std::vector<float> r(lr, lr + static_cast<size_t>(n) * vocab);
    const float* lt = test.model().forward(chunks);
    for (int s = 0; s < n; ++s) {
      const int a = c.add(r.data() + static_cast<size_t>(s) * vocab, lt + static_cast<size_t>(s) * vocab, vocab);
      if (a < 0) return c;
      SequenceChunk& ch = chunks[s];
      ch.start_pos += static_cast<int>(ch.tokens.size());
      ch.tokens = {a};
    }
  }
  return c;
}

// The tensor-core matrix-vector kernel end to end (decode steps of 8 and 16 tokens: one and two 8-token
// tiles; stories260K's odd shapes: 172 SwiGLU rows, rows of 172 columns that do not start on 16 bytes)
// against the cuBLAS path on the same model: logits along the cuBLAS path within the dtype's bound, the
// argmax equal except at ties within the measured error, and the batch-8 greedy text equal where no tie
// came up along the way (a tie can send two correct paths apart).
TEST(LlamaCuda, TensorCoreGemvBatchesMatchCublas) {
  LLM_REQUIRE_GPU();
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  const std::vector<std::string> prompts = {
      "Once upon a time",      "The little dog",  "Lily and Ben",       "One day, a big red ball",
      "Tom had a toy car. He", "The sun was hot", "A cat sat on",       "Mom said",
      "The bird flew",         "In the park",     "Sam liked to",       "The old tree",
      "She found a",           "The boat was",    "It was a sunny day", "The girl and her friend"};
  for (auto [dtype, bound] : {std::pair{"bf16", 3e-2}, {"fp16", 1e-2}}) {
    Engine tc(gpu_config(model, dtype), 16), cublas(gpu_config(model, dtype), 16);
    dynamic_cast<cuda::LlamaCuda&>(tc.model()).set_gemv_kernel(cuda::GemvKernel::TensorCore);
    // The products alone: both read the RMSNorm launches' output (the norm prepared by the adds rounds its
    // input elsewhere; PreparedNormAtSeveralSequencesGivesTheLogitsOfTheNormLaunches compares that).
    dynamic_cast<cuda::LlamaCuda&>(tc.model()).set_prepare_norm(false);
    dynamic_cast<cuda::LlamaCuda&>(cublas.model()).set_gemv_max_tokens(0);
    int ties = 0;
    for (int batch : {8, 16}) {
      const std::vector<std::string> some(prompts.begin(), prompts.begin() + batch);
      const test::PathComparison c = compare_batch_along_path(tc, cublas, some, 60);
      std::printf(
          "%s, batch %d: tensor-core GEMV vs cuBLAS along 60 greedy steps: max relative L2 logit error %.3e "
          "(bound %.0e), argmax differs at %d step(s), %d not explained by a tie\n",
          dtype, batch, c.max_rel_err, bound, c.argmax_differs, c.unexplained);
      EXPECT_LT(c.max_rel_err, bound) << dtype << " batch " << batch;
      EXPECT_EQ(c.unexplained, 0) << dtype << " batch " << batch;
      if (batch == 8) ties = c.argmax_differs;
    }
    GenerationOptions o;
    o.max_tokens = 60;
    o.stop_at_eos = false;
    const std::vector<std::string> eight(prompts.begin(), prompts.begin() + 8);
    const auto a = tc.generate_batch(eight, o), b = cublas.generate_batch(eight, o);
    int same = 0;
    for (size_t i = 0; i < eight.size(); ++i) same += a[i].tokens == b[i].tokens;
    std::printf("%s, batch 8: %d of 8 greedy texts equal\n", dtype, same);
    if (ties == 0) {
      for (size_t i = 0; i < eight.size(); ++i) EXPECT_EQ(a[i].tokens, b[i].tokens) << dtype << " " << eight[i];
    }
  }
}

}  // namespace
}  // namespace llm
