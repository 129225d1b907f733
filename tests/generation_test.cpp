// End to end on stories260K: text, fallback across the chain, prefill vs decode, int8 vs fp32.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "backend_chain.h"
#include "engine.h"
#include "error.h"
#include "sampler.h"
#include "test_support.h"

namespace llm {
namespace {

using testing::HasSubstr;

RunConfig config_for(const std::string& model, std::vector<std::string> order = {"mha_cpu"}) {
  RunConfig c;
  c.model = model;
  c.tokenizer = test::model_path("tok512.bin");
  c.backend_order = std::move(order);
  c.plugin_dirs = {LLM_PLUGIN_DIR, LLM_TEST_PLUGIN_DIR};
  c.threads = 2;
  return c;
}

GenerationOptions greedy(int max_tokens, bool stop_at_eos = true) {
  GenerationOptions o;
  o.max_tokens = max_tokens;
  o.stop_at_eos = stop_at_eos;
  return o;
}

TEST(Generation, GreedyStories260KTellsTheKnownStory) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  Engine engine(config_for(model));
  std::string streamed;
  auto r = engine.generate("Once upon a time", greedy(40), [&](const std::string& t) { streamed += t; });
  EXPECT_THAT("Once upon a time" + r.text,
              testing::StartsWith("Once upon a time, there was a little girl named Lily. She loved to play "
                                  "outside in the park."));
  EXPECT_EQ(streamed, r.text) << "what is streamed is what is returned";
  EXPECT_EQ(r.backends, std::vector<std::string>{"mha_cpu"});
}

TEST(Generation, FallbackMidGenerationGivesIdenticalTokens) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  auto clean = Engine(config_for(model)).generate("Once upon a time", greedy(100, false));
  // flaky_cpu serves the same numbers as mha_cpu until its Nth call fails: call 1 is the first layer of
  // the prefill, 3 mid-prefill (5 layers), 48 mid-decode.
  for (const char* fail_at : {"1", "3", "48"}) {
    ::setenv("LLM_FLAKY_FAIL_AT", fail_at, 1);
    Engine engine(config_for(model, {"flaky_cpu", "mha_cpu"}));
    auto r = engine.generate("Once upon a time", greedy(100, false));
    ::unsetenv("LLM_FLAKY_FAIL_AT");
    EXPECT_EQ(r.tokens, clean.tokens) << "fail at call " << fail_at;
    // failing on its very first call, flaky_cpu never served one
    const auto served = std::string(fail_at) == "1" ? std::vector<std::string>{"mha_cpu"}
                                                    : std::vector<std::string>{"flaky_cpu", "mha_cpu"};
    EXPECT_EQ(r.backends, served) << "fail at call " << fail_at;
    EXPECT_EQ(engine.model().attention_backend(), "mha_cpu");
  }
}

TEST(Generation, BadPluginsAreRejectedWithReasonsWhileTheRunSucceeds) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  Engine engine(config_for(model, {}));  // default order, test plugins in the search path
  int rejected = 0;
  for (const auto& c : engine.plugins()) {
    if (c.path.find("wrong_abi.so") != std::string::npos) {
      EXPECT_THAT(c.rejection, HasSubstr("ABI major mismatch"));
      ++rejected;
    }
    if (c.path.find("no_entry.so") != std::string::npos) {
      EXPECT_THAT(c.rejection, HasSubstr("missing entry symbol"));
      ++rejected;
    }
  }
  EXPECT_EQ(rejected, 2);
  auto r = engine.generate("Once upon a time", greedy(20));
  EXPECT_EQ(r.tokens.size(), 20u);
  EXPECT_EQ(r.backends, std::vector<std::string>{"mha_cpu"});
}

TEST(Generation, InjectedFailureMovesTheRunToTheNextBackend) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  auto clean = Engine(config_for(model)).generate("Once upon a time", greedy(80, false));
  // mha_cpu fails its 1st call (first prefill layer), its 3rd (mid-prefill) or its 60th (mid-decode);
  // flaky_cpu (told never to fail) computes the same numbers and takes over.
  ::setenv("LLM_FLAKY_FAIL_AT", "0", 1);
  for (const char* drill : {"mha_cpu@1", "mha_cpu@3", "mha_cpu@60"}) {
    RunConfig c = config_for(model, {"mha_cpu", "flaky_cpu"});
    c.fail_backend = {drill};
    Engine engine(c);
    auto r = engine.generate("Once upon a time", greedy(80, false));
    EXPECT_EQ(r.tokens, clean.tokens) << drill;
    EXPECT_EQ(engine.model().attention_backend(), "flaky_cpu") << drill;
  }
  ::unsetenv("LLM_FLAKY_FAIL_AT");
}

TEST(Generation, InjectedFailureFormIsChecked) {
  EXPECT_EQ(parse_injected_failure("mha_cuda@40").call, 40);
  EXPECT_EQ(parse_injected_failure("mha_cuda@40").backend, "mha_cuda");
  for (const char* bad : {"mha_cuda", "@3", "mha_cuda@0", "mha_cuda@x", "mha_cuda@4x"})
    EXPECT_THROW(parse_injected_failure(bad), Error) << bad;
}

TEST(Generation, EveryBackendFailingIsAnErrorNotAHang) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  ::setenv("LLM_FLAKY_FAIL_AT", "2", 1);
  Engine engine(config_for(model, {"flaky_cpu"}));
  try {
    engine.generate("Once upon a time", greedy(10));
    ::unsetenv("LLM_FLAKY_FAIL_AT");
    FAIL() << "expected llm::Error";
  } catch (const Error& e) {
    ::unsetenv("LLM_FLAKY_FAIL_AT");
    EXPECT_THAT(e.what(), HasSubstr("every backend in the chain (flaky_cpu) has failed"));
  }
}

TEST(Generation, BatchedPrefillEqualsTokenByTokenBitwise) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  Engine a(config_for(model)), b(config_for(model));
  const std::vector<int> tokens = a.tokenizer().encode("Lily and Ben went to the shop to buy milk", true);
  const int vocab = a.model().config().vocab_size;
  const float* batched = a.model().forward({SequenceChunk{0, 0, tokens}});
  std::vector<float> batched_copy(batched, batched + vocab);
  const float* stepwise = nullptr;
  for (size_t i = 0; i < tokens.size(); ++i) stepwise = b.model().forward({SequenceChunk{0, int(i), {tokens[i]}}});
  for (int i = 0; i < vocab; ++i) ASSERT_EQ(batched_copy[i], stepwise[i]) << "logit " << i;
}

TEST(Generation, SequencesInOneBatchMatchThemRunAlone) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  RunConfig c = config_for(model);
  Engine batch(c, 2), alone(c, 1);
  const auto t1 = batch.tokenizer().encode("The little dog", true);
  const auto t2 = batch.tokenizer().encode("Tom had a toy car. He", true);
  const int vocab = batch.model().config().vocab_size;
  const float* both = batch.model().forward({SequenceChunk{0, 0, t1}, SequenceChunk{1, 0, t2}});
  std::vector<float> copy(both, both + 2 * vocab);
  const float* one = alone.model().forward({SequenceChunk{0, 0, t2}});
  for (int i = 0; i < vocab; ++i) ASSERT_EQ(copy[vocab + i], one[i]);
}

TEST(Generation, BatchedGenerationGivesEachPromptItsOwnText) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog", "Tom had a toy car. He",
                                            "One day, a big red ball"};
  GenerationOptions o = greedy(60);
  Engine batch(config_for(model), static_cast<int>(prompts.size()));
  std::vector<std::string> streamed(prompts.size());
  auto results = batch.generate_batch(prompts, o, [&](size_t i, const std::string& t) { streamed[i] += t; });
  ASSERT_EQ(results.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto alone = Engine(config_for(model)).generate(prompts[i], o);
    EXPECT_EQ(results[i].tokens, alone.tokens) << prompts[i];
    EXPECT_EQ(results[i].text, alone.text) << prompts[i];
    EXPECT_EQ(streamed[i], results[i].text);
  }
  // sequences stop on their own: different max_tokens would be the same loop; here EOS/limits differ per text
  EXPECT_THROW(Engine(config_for(model), 2).generate_batch({"a", "b", "c"}, o), Error);
}

// A model that serves through another and counts forward_argmax_steps calls of more than one step.
class CountingModel : public LanguageModel {
 public:
  explicit CountingModel(LanguageModel& inner) : inner_(inner) {}
  const ModelConfig& config() const override { return inner_.config(); }
  int max_batch() const override { return inner_.max_batch(); }
  int max_context() const override { return inner_.max_context(); }
  const float* forward(const std::vector<SequenceChunk>& chunks) override { return inner_.forward(chunks); }
  void forward_argmax(const std::vector<SequenceChunk>& chunks, int* ids) override {
    inner_.forward_argmax(chunks, ids);
  }
  void forward_argmax_steps(const std::vector<SequenceChunk>& chunks, int steps, int* ids) override {
    if (steps > 1) ++runs;
    inner_.forward_argmax_steps(chunks, steps, ids);
  }
  std::string attention_backend() const override { return inner_.attention_backend(); }
  std::vector<std::string> attention_backends_used() const override { return inner_.attention_backends_used(); }
  int runs = 0;

 private:
  LanguageModel& inner_;
};

// Greedy decode in runs of several steps a call (the GPU model's way) gives each sequence the text of one
// step a call: sequences stopping inside a run (EOS, a listed stop token, their own max_tokens), runs cut
// short by max_tokens and by a full context, the streamed text.
TEST(Generation, GreedyRunsOfSeveralStepsGiveTheTextOfSingleSteps) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog", "Tom had a toy car. He",
                                            "One day, a big red ball"};
  RunConfig c = config_for(model);
  c.max_context = 72;  // the longest prompt and its text run into it
  Engine engine(c, static_cast<int>(prompts.size()));
  const int period = engine.tokenizer().encode(".", false).back();
  for (bool stop_at_eos : {true, false})
    for (int max_tokens : {1, 2, 37, 100}) {
      GenerationOptions o = greedy(max_tokens, stop_at_eos);
      if (stop_at_eos) o.stop_tokens = {period};  // ends texts at their first sentence, inside runs
      o.steps_ahead = 1;
      std::vector<std::string> streamed_one(prompts.size()), streamed(prompts.size());
      const auto one = generate_batch(engine.model(), engine.tokenizer(), prompts, o,
                                      [&](size_t i, const std::string& t) { streamed_one[i] += t; });
      for (int ahead : {2, 3, 8}) {
        o.steps_ahead = ahead;
        CountingModel counting(engine.model());
        std::fill(streamed.begin(), streamed.end(), std::string());
        const auto runs = generate_batch(counting, engine.tokenizer(), prompts, o,
                                         [&](size_t i, const std::string& t) { streamed[i] += t; });
        if (max_tokens > 2) {
          EXPECT_GT(counting.runs, 0) << "no run of several steps at max_tokens " << max_tokens;
        }
        for (size_t i = 0; i < prompts.size(); ++i) {
          const std::string where = prompts[i] + ", " + std::to_string(ahead) + " steps a run, max_tokens " +
                                    std::to_string(max_tokens) + (stop_at_eos ? ", stopping at '.'" : "");
          EXPECT_EQ(runs[i].tokens, one[i].tokens) << where;
          EXPECT_EQ(runs[i].text, one[i].text) << where;
          EXPECT_EQ(runs[i].stop, one[i].stop) << where;
          EXPECT_EQ(streamed[i], streamed_one[i]) << where;
        }
      }
      if (!stop_at_eos && max_tokens == 100) {  // the context, not max_tokens, ended these
        for (const auto& r : one) EXPECT_EQ(r.stop, StopReason::ContextFull);
      }
    }
}

// forward_argmax_steps gives the ids of as many forward_argmax calls, each step's picks the next one's
// tokens; its arguments are checked with reasons.
TEST(Generation, StepsOfGreedyDecodeFollowTheirOwnPicks) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  Engine a(config_for(model), 2), b(config_for(model), 2);
  const auto p1 = a.tokenizer().encode("The little dog", true), p2 = a.tokenizer().encode("Once upon", true);
  int first[2];
  a.model().forward_argmax({SequenceChunk{0, 0, p1}, SequenceChunk{1, 0, p2}}, first);
  b.model().forward_argmax({SequenceChunk{0, 0, p1}, SequenceChunk{1, 0, p2}}, first);
  const int n1 = static_cast<int>(p1.size()), n2 = static_cast<int>(p2.size()), steps = 5;
  std::vector<int> ids(2 * steps);
  a.model().forward_argmax_steps({SequenceChunk{0, n1, {first[0]}}, SequenceChunk{1, n2, {first[1]}}}, steps,
                                 ids.data());
  int tok[2] = {first[0], first[1]};
  for (int s = 0; s < steps; ++s) {
    int next[2];
    b.model().forward_argmax({SequenceChunk{0, n1 + s, {tok[0]}}, SequenceChunk{1, n2 + s, {tok[1]}}}, next);
    EXPECT_EQ(ids[2 * s], next[0]) << "step " << s;
    EXPECT_EQ(ids[2 * s + 1], next[1]) << "step " << s;
    tok[0] = next[0], tok[1] = next[1];
  }
  auto error = [&](const std::vector<SequenceChunk>& chunks, int n) {
    try {
      a.model().forward_argmax_steps(chunks, n, ids.data());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_THAT(error({SequenceChunk{0, 3, {5}}}, 0), HasSubstr("0 steps; at least 1"));
  EXPECT_THAT(error({SequenceChunk{1, 3, {5, 6}}}, 2), HasSubstr("the chunk of slot 1 has 2 tokens"));
  const int context = a.model().max_context();
  EXPECT_THAT(error({SequenceChunk{0, context - 2, {5}}}, 3),
              HasSubstr("3 steps from position " + std::to_string(context - 2) + " (slot 0) run past the context"));
}

TEST(Generation, PromptLongerThanTheContextIsAClearError) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  RunConfig c = config_for(model);
  c.max_context = 16;
  Engine engine(c);
  try {
    engine.generate("Once upon a time there was a girl who liked to play in the big green park with her dog",
                    greedy(5));
    FAIL() << "expected llm::Error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("but the model's context holds 16"));
  }
}

TEST(Generation, StopsWhenTheContextIsFull) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  RunConfig c = config_for(model);
  c.max_context = 24;
  auto r = Engine(c).generate("Once upon a time", greedy(100, false));
  EXPECT_EQ(r.stop, StopReason::ContextFull);
  EXPECT_EQ(r.prompt_tokens.size() + r.tokens.size(), 25u) << "the last sampled token needs no cache slot";
}

TEST(Generation, SeededSamplingIsReproducible) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  GenerationOptions o = greedy(50);
  o.sampling = SamplingParams{0.9f, 40, 0.95f, 1234};
  auto a = Engine(config_for(model)).generate("The little dog", o);
  auto b = Engine(config_for(model)).generate("The little dog", o);
  EXPECT_EQ(a.tokens, b.tokens);
  o.sampling.seed = 4321;
  auto c = Engine(config_for(model)).generate("The little dog", o);
  EXPECT_NE(a.tokens, c.tokens);
}

// Sampling draws each sequence's uniform from its own Sampler (seed + its index) and lets the model pick
// (LanguageModel::forward_sample): the text is what Sampler::sample picks from the same logits step by
// step, here replayed with forward() on each prompt alone, for two prompts decoded together.
TEST(Generation, SampledTextIsWhatEachSequencesSamplerPicks) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  GenerationOptions o = greedy(40, false);
  o.sampling = SamplingParams{0.8f, 20, 0.9f, 7};
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog"};
  const auto batched = Engine(config_for(model), 2).generate_batch(prompts, o);
  for (size_t i = 0; i < prompts.size(); ++i) {
    Engine alone(config_for(model));
    SamplingParams p = o.sampling;
    p.seed += i;
    Sampler sampler(p);
    const int vocab = alone.model().config().vocab_size;
    std::vector<int> tokens = alone.tokenizer().encode(prompts[i], true), picked;
    int t = sampler.sample(alone.model().forward({SequenceChunk{0, 0, tokens}}), vocab);
    for (int step = 0; step < o.max_tokens; ++step) {
      picked.push_back(t);
      const int pos = static_cast<int>(tokens.size());
      tokens.push_back(t);
      if (step + 1 < o.max_tokens) t = sampler.sample(alone.model().forward({SequenceChunk{0, pos, {t}}}), vocab);
    }
    EXPECT_EQ(batched[i].tokens, picked) << prompts[i];
  }
}

// The int8 file holds the very weights the fp32 file was dequantized from, so the only difference is
// that int8 products quantize activations to 8 bits per group of 32 (relative error ~0.4% per value).
// Bound: while the texts agree, the logits differ by less than 2% of their spread at every step (measured:
// 0.95%), and the greedy texts agree for at least 150 of 200 tokens (measured: 194; they part at a step
// where fp32's top two logits are nearly tied).
TEST(Generation, Int8StaysCloseToFp32) {
  LLM_REQUIRE_MODEL(fp32_path, "stories260K.bin");
  LLM_REQUIRE_MODEL(int8_path, "stories260K_q80.bin");
  Engine f(config_for(fp32_path)), q(config_for(int8_path));
  const int vocab = f.model().config().vocab_size;
  std::vector<int> tokens = f.tokenizer().encode("Once upon a time", true);
  const float* lf = f.model().forward({SequenceChunk{0, 0, tokens}});
  std::vector<float> fl(lf, lf + vocab);
  const float* lq = q.model().forward({SequenceChunk{0, 0, tokens}});
  int agreed = 0;
  double worst = 0;
  for (int step = 0; step < 200; ++step) {
    const auto [lo, hi] = std::minmax_element(fl.begin(), fl.end());
    double max_diff = 0;
    for (int i = 0; i < vocab; ++i) max_diff = std::max(max_diff, double(std::fabs(fl[i] - lq[i])));
    worst = std::max(worst, max_diff / (*hi - *lo));
    const int tf = argmax(fl.data(), vocab), tq = argmax(lq, vocab);
    if (tf != tq) break;
    ++agreed;
    const int pos = static_cast<int>(tokens.size());
    tokens.push_back(tf);
    lf = f.model().forward({SequenceChunk{0, pos, {tf}}});
    fl.assign(lf, lf + vocab);
    lq = q.model().forward({SequenceChunk{0, pos, {tq}}});
  }
  std::printf("int8 vs fp32: %d of 200 greedy tokens agree; worst logit difference %.4f of the logit range\n", agreed,
              worst);
  EXPECT_LT(worst, 0.02);
  EXPECT_GE(agreed, 150) << "int8 greedy text diverged from fp32 after " << agreed << " tokens";
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// Backends we did not write: the SDK's example (plain C, SDK header only) and the same file built against
// the frozen ABI 1.0 header tell mha_cpu's story token for token.
TEST(Generation, SdkExampleBackendsOfEveryMinorTellTheSameStory) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  auto ref = Engine(config_for(model)).generate("Once upon a time", greedy(120, false));
  for (const char* backend : {"example_cpu", "example_abi10", "example_future_ok"}) {
    Engine engine(config_for(model, {backend}));
    auto r = engine.generate("Once upon a time", greedy(120, false));
    EXPECT_EQ(r.tokens, ref.tokens) << backend;
    EXPECT_EQ(r.backends, std::vector<std::string>{backend});
  }
}

// Every backend but the last fails (flaky_cpu on its first call, example_cpu mid-decode): the last one
// finishes the run with the same text.
TEST(Generation, EveryBackendButTheLastFailingStillGivesTheSameText) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  auto ref = Engine(config_for(model)).generate("Once upon a time", greedy(100, false));
  ::setenv("LLM_FLAKY_FAIL_AT", "1", 1);
  RunConfig c = config_for(model, {"flaky_cpu", "example_cpu", "mha_cpu"});
  c.fail_backend = {"example_cpu@60"};  // 5 layers: call 60 is in the decode
  Engine engine(c);
  auto r = engine.generate("Once upon a time", greedy(100, false));
  ::unsetenv("LLM_FLAKY_FAIL_AT");
  EXPECT_EQ(r.tokens, ref.tokens);
  EXPECT_EQ(r.backends, (std::vector<std::string>{"example_cpu", "mha_cpu"}));
  EXPECT_EQ(engine.model().attention_backend(), "mha_cpu");
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// A backend that reports success with a NaN in its output, or without writing it at all: with the output
// check on, the call counts as failed and the next backend gives the same text; without it the bad result
// would go through (which is why the check exists).
TEST(Generation, CheckedBackendReturningNanOrNothingFailsOverWithTheSameText) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  auto ref = Engine(config_for(model)).generate("Once upon a time", greedy(80, false));
  ::setenv("LLM_FLAKY_FAIL_AT", "0", 1);
  ::setenv("LLM_FLAKY_BAD_AT", "40", 1);  // mid-decode (5 layers a token)
  for (const char* bad : {"nan", "skip"}) {
    ::setenv("LLM_FLAKY_BAD", bad, 1);
    RunConfig c = config_for(model, {"flaky_cpu", "mha_cpu"});
    c.check_output = {"flaky_cpu"};
    Engine engine(c);
    auto r = engine.generate("Once upon a time", greedy(80, false));
    EXPECT_EQ(r.tokens, ref.tokens) << bad;
    EXPECT_EQ(r.backends, (std::vector<std::string>{"flaky_cpu", "mha_cpu"})) << bad;
    EXPECT_EQ(engine.model().attention_backend(), "mha_cpu") << bad;
  }
  ::setenv("LLM_FLAKY_BAD", "nan", 1);
  Engine unchecked(config_for(model, {"flaky_cpu", "mha_cpu"}));
  auto r = unchecked.generate("Once upon a time", greedy(80, false));
  EXPECT_EQ(unchecked.model().attention_backend(), "flaky_cpu") << "unchecked, the NaN is not noticed";
  ::unsetenv("LLM_FLAKY_BAD");
  ::unsetenv("LLM_FLAKY_BAD_AT");
  ::unsetenv("LLM_FLAKY_FAIL_AT");
}

}  // namespace
}  // namespace llm
