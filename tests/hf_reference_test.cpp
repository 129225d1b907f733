// Greedy generation from stories260K.bin against an independent implementation: HF transformers'
// LlamaForCausalLM in float64 (tools/hf_reference.py, run on the GPU machine; its output is
// tests/data/stories260K_hf_greedy.json). Token for token over 200 steps, for every prompt.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine.h"
#include "test_support.h"

namespace llm {
namespace {

nlohmann::json load_reference() {
  std::ifstream in(std::string(LLM_TEST_DATA_DIR) + "/stories260K_hf_greedy.json");
  return nlohmann::json::parse(in);
}

// Relative L2 difference between our fp32 logits and the float64 reference.
double rel_diff(const float* ours, const nlohmann::json& ref) {
  double e = 0, r = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double x = ref[i].get<double>();
    if (!std::isfinite(ours[i])) return INFINITY;
    e += (ours[i] - x) * (ours[i] - x);
    r += x * x;
  }
  return std::sqrt(e / r);
}

TEST(HfReference, GreedyTokensMatchTransformersForEveryPrompt) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  const nlohmann::json ref = load_reference();
  ASSERT_GE(ref["prompts"].size(), 5u);
  RunConfig c;
  c.model = model;
  c.tokenizer = test::model_path("tok512.bin");
  c.backend_order = {"mha_cpu"};
  c.plugin_dirs = {LLM_PLUGIN_DIR};
  for (const auto& p : ref["prompts"]) {
    Engine engine(c);
    const std::string prompt = p["prompt"];
    const auto prompt_ids = p["prompt_ids"].get<std::vector<int>>();
    const auto expected = p["generated_ids"].get<std::vector<int>>();
    // Our llama2.c tokenizer against sentencepiece's ids, then 200 greedy steps with no stop token.
    ASSERT_EQ(engine.tokenizer().encode(prompt, true), prompt_ids) << prompt;
    std::vector<int> tokens = prompt_ids;
    const int vocab = engine.model().config().vocab_size;
    const float* logits = engine.model().forward({SequenceChunk{0, 0, tokens}});
    for (size_t step = 0; step < expected.size(); ++step) {
      if (step == 0) {
        EXPECT_LT(rel_diff(logits, p["logits_step0"]), 1e-5) << prompt;
      }
      if (step == 100) {
        EXPECT_LT(rel_diff(logits, p["logits_step100"]), 1e-5) << prompt;
      }
      const int next = argmax(logits, vocab);
      ASSERT_EQ(next, expected[step]) << "prompt '" << prompt << "' step " << step << " (reference margin "
                                      << p["margin"][step].get<double>() << ")";
      tokens.push_back(next);
      logits = engine.model().forward({SequenceChunk{0, static_cast<int>(tokens.size()) - 1, {next}}});
    }
  }
}

TEST(HfReference, GenerateStreamsTheReferenceText) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  const nlohmann::json ref = load_reference();
  const auto& p = ref["prompts"][0];
  RunConfig c;
  c.model = model;
  c.tokenizer = test::model_path("tok512.bin");
  c.plugin_dirs = {LLM_PLUGIN_DIR};
  GenerationOptions o;
  o.max_tokens = 200;
  o.stop_at_eos = false;
  auto r = Engine(c).generate(p["prompt"], o);
  EXPECT_EQ(r.tokens, p["generated_ids"].get<std::vector<int>>());
  // The reference's text is sentencepiece's decode of prompt + generated ids.
  EXPECT_EQ(p["prompt"].get<std::string>() + r.text, p["text"].get<std::string>());
}

}  // namespace
}  // namespace llm
