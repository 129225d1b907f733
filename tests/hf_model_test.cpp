// Hugging Face Llama directories: stories260K exported in HF's layout (config.json, safetensors, q/k rows
// in HF's rotary halves, tokenizer.model) tells the llama2.c file's story; sharded and untied variants;
// Llama 3.1 RoPE scaling against HF's formula; bad directories get errors naming the file and the tensor.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "checkpoint.h"
#include "engine.h"
#include "error.h"
#include "half.h"
#include "language_model.h"
#include "model_export.h"
#include "test_support.h"

namespace llm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::HasSubstr;

TEST(HfModel, Stories260KInHfLayoutTellsTheSameStory) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  LLM_REQUIRE_MODEL(spm, "tok512.model");
  const auto ck = Checkpoint::open(model);
  test::TempDir dir;
  const auto ref = Engine(test::cpu_config(model, spm)).generate("Once upon a time", test::greedy(200));
  for (auto [name, opts] : {std::pair{"single", test::ExportOptions{}},
                            {"sharded", test::ExportOptions{"F32", true, false}},
                            {"untied", test::ExportOptions{"F32", false, true}}}) {
    const std::string hf = test::export_hf(dir, name, *ck, opts);
    Engine e(test::cpu_config(hf, ""));  // the directory's tokenizer.model
    EXPECT_EQ(e.model().config().shared_classifier, !opts.untied) << name;
    const auto r = e.generate("Once upon a time", test::greedy(200));
    EXPECT_EQ(r.tokens, ref.tokens) << name;
  }
  // bf16 weights: the story's opening survives the rounding
  Engine bf16(test::cpu_config(test::export_hf(dir, "bf16", *ck, {"BF16", false, false}), ""));
  const auto r = bf16.generate("Once upon a time", test::greedy(30));
  EXPECT_THAT("Once upon a time" + r.text,
              testing::StartsWith("Once upon a time, there was a little girl named Lily."));
}

// generation_config.json's eos_token_id list ends the text at any of its ids, as HF generate() does.
TEST(HfModel, GenerationConfigEosIdsEndTheText) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  const auto ck = Checkpoint::open(model);
  test::TempDir dir;
  const std::string hf = test::export_hf(dir, "eos", *ck, {});
  Engine plain(test::cpu_config(hf, ""));
  const auto ref = plain.generate("Once upon a time", test::greedy(60));
  // the first "." of the story becomes an end-of-text token
  size_t k = 0;
  while (k < ref.tokens.size() && plain.tokenizer().decode_piece(k ? ref.tokens[k - 1] : 1, ref.tokens[k]) != ".") ++k;
  ASSERT_LT(k, ref.tokens.size()) << "no '.' in the reference text";
  std::ofstream(fs::path(hf) / "generation_config.json") << json{{"eos_token_id", {2, ref.tokens[k]}}}.dump();
  Engine e(test::cpu_config(hf, ""));
  EXPECT_EQ(e.checkpoint().eos_ids(), (std::vector<int>{2, ref.tokens[k]}));
  GenerationOptions o = e.generation_options();
  o.max_tokens = 60;
  const auto r = e.generate("Once upon a time", o);
  EXPECT_EQ(r.stop, StopReason::EndOfText);
  EXPECT_EQ(r.tokens, std::vector<int>(ref.tokens.begin(), ref.tokens.begin() + static_cast<long>(k)));
  std::ofstream(fs::path(hf) / "generation_config.json") << json{{"eos_token_id", 100000}}.dump();
  EXPECT_THAT(test::checkpoint_error(hf), HasSubstr("eos_token_id 100000 is not a token id below vocab_size 512"));
}

// HF transformers' _compute_llama3_parameters, transcribed with its array-wide selects.
std::vector<double> hf_llama3_inv_freq(double base, int dim, double factor, double low, double high, double old_ctx) {
  std::vector<double> inv(dim / 2), out(dim / 2);
  for (int i = 0; i < dim / 2; ++i) inv[i] = 1.0 / std::pow(base, 2.0 * i / dim);
  const double low_wl = old_ctx / low, high_wl = old_ctx / high;
  for (int i = 0; i < dim / 2; ++i) {
    const double wavelen = 2 * M_PI / inv[i];
    double llama = wavelen > low_wl ? inv[i] / factor : inv[i];
    const double smooth = (old_ctx / wavelen - low) / (high - low);
    const double smoothed = (1 - smooth) * llama / factor + smooth * llama;
    const bool medium = !(wavelen < high_wl) && !(wavelen > low_wl);
    out[i] = medium ? smoothed : llama;
  }
  return out;
}

TEST(HfModel, Llama3RopeScalingFollowsHfFormula) {
  ModelConfig c;
  c.dim = 4096, c.n_heads = 32;  // head_dim 128, as Llama 3.1 8B
  c.rope_theta = 500000.0f;
  c.rope_scaling = {8.0f, 1.0f, 4.0f, 8192};
  const auto want = hf_llama3_inv_freq(500000.0, 128, 8.0, 1.0, 4.0, 8192.0);
  int low = 0, medium = 0, high = 0;
  for (int i = 0; i < 64; ++i) {
    const double got = rope_frequency(c, i), plain = std::pow(500000.0, -2.0 * i / 128);
    EXPECT_NEAR(got / want[i], 1.0, 1e-6) << "pair " << i;
    (got == plain ? high : std::abs(got - plain / 8) < 1e-12 * plain ? low : medium)++;
  }
  EXPECT_GT(low, 0);
  EXPECT_GT(medium, 0);  // the blend is exercised
  EXPECT_GT(high, 0);
  // and the table the forward pass uses rotates by those frequencies
  const auto table = rope_table(c, 3);
  EXPECT_NEAR(table[(2 * 64 + 63) * 2], std::cos(2 * want[63]), 1e-6);
}

TEST(HfModel, BadDirectoriesGetErrorsNamingTheFileAndThePart) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  LLM_REQUIRE_MODEL(spm, "tok512.model");
  const auto ck = Checkpoint::open(model);
  test::TempDir dir;
  auto edit_config = [&](const std::string& name, const std::function<void(json&)>& f) {
    const std::string hf = test::export_hf(dir, name, *ck, {});
    json cfg = json::parse(std::ifstream(fs::path(hf) / "config.json"));
    f(cfg);
    std::ofstream(fs::path(hf) / "config.json") << cfg.dump();
    return hf;
  };
  EXPECT_THAT(
      test::checkpoint_error(edit_config("mistral", [](json& c) { c["architectures"] = {"MistralForCausalLM"}; })),
      HasSubstr("architectures [\"MistralForCausalLM\"] is not supported"));
  EXPECT_THAT(test::checkpoint_error(edit_config("yarn",
                                                 [](json& c) {
                                                   c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}};
                                                 })),
              HasSubstr("rope_scaling type 'yarn' is not supported"));
  EXPECT_THAT(test::checkpoint_error(
                  edit_config("yarn5",  // transformers 5 writes rope_parameters
                              [](json& c) {
                                c["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e4}, {"factor", 4}};
                              })),
              HasSubstr("rope_parameters type 'yarn' is not supported"));
  EXPECT_THAT(test::checkpoint_error(edit_config("nolayers", [](json& c) { c.erase("num_hidden_layers"); })),
              HasSubstr("'num_hidden_layers' is missing"));
  EXPECT_THAT(test::checkpoint_error(edit_config("strlayers", [](json& c) { c["num_hidden_layers"] = "five"; })),
              HasSubstr("'num_hidden_layers' is \"five\", expected an integer"));
  // numbers past int, or written as floats, are refused as they stand (not wrapped or truncated)
  EXPECT_THAT(test::checkpoint_error(edit_config("huge", [](json& c) { c["intermediate_size"] = 4294967296; })),
              HasSubstr("'intermediate_size' is 4294967296, expected an integer from -2147483648 to 2147483647"));
  EXPECT_THAT(test::checkpoint_error(edit_config("float", [](json& c) { c["hidden_size"] = 1e308; })),
              HasSubstr("'hidden_size' is 1e+308, expected an integer"));
  EXPECT_THAT(
      test::checkpoint_error(edit_config("negative", [](json& c) { c["vocab_size"] = -9223372036854775807LL; })),
      HasSubstr("'vocab_size' is -9223372036854775807, expected an integer"));
  EXPECT_THAT(test::checkpoint_error(edit_config("wide", [](json& c) { c["intermediate_size"] = 180; })),
              HasSubstr("tensor 'model.layers.0.mlp.gate_proj.weight' has shape [172, 64], expected [180, 64]"));

  // a tensor missing from the file, and a file cut short
  const std::string hf = test::export_hf(dir, "cut", *ck, {});
  const std::string st = (fs::path(hf) / "model.safetensors").string();
  const auto size = fs::file_size(st);
  fs::resize_file(st, size - 1000);
  EXPECT_THAT(test::checkpoint_error(hf), HasSubstr("model.safetensors: safetensors: tensor"));
  EXPECT_THAT(test::checkpoint_error(hf), HasSubstr("past the"));
  const std::string hf2 = test::export_hf(dir, "partial", *ck, {test::ExportOptions{"F32", true, false}});
  json index = json::parse(std::ifstream(fs::path(hf2) / "model.safetensors.index.json"));
  index["weight_map"].erase("model.layers.4.mlp.up_proj.weight");
  std::ofstream(fs::path(hf2) / "model.safetensors.index.json") << index.dump();
  EXPECT_THAT(test::checkpoint_error(hf2),
              HasSubstr("tensor 'model.layers.4.mlp.up_proj.weight' is missing from model.safetensors.index.json"));

  index["weight_map"]["model.norm.weight"] = 7;  // not a file name
  std::ofstream(fs::path(hf2) / "model.safetensors.index.json") << index.dump();
  EXPECT_THAT(test::checkpoint_error(hf2), HasSubstr("malformed model directory JSON"));

  // the directory's tokenizer.json is used when there is no tokenizer.model: a malformed one is named
  const std::string bpe = test::export_hf(dir, "bpe", *ck, {});
  fs::remove(fs::path(bpe) / "tokenizer.model");
  std::ofstream(fs::path(bpe) / "tokenizer.json") << "{}";
  try {
    Engine e(test::cpu_config(bpe, ""));
    ADD_FAILURE() << "a directory with an empty tokenizer.json loaded";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("tokenizer.json: not a Hugging Face tokenizer.json (no 'model' object)"));
  }
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// The same for safetensors: damaged headers and cut files give llm::Error, never a crash.
TEST(HfModel, DamagedSafetensorsNeverCrashTheLoader) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  const auto ck = Checkpoint::open(model);
  test::TempDir dir;
  const std::string hf = test::export_hf(dir, "fuzz", *ck, {});
  const std::string st = (fs::path(hf) / "model.safetensors").string();
  const std::string good = test::read_all(st);
  std::mt19937 rng(9);
  int errors = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes = good;
    for (int f = 0; f < 1 + static_cast<int>(rng() % 4); ++f)
      bytes[rng() % std::min<size_t>(bytes.size(), 8 + 4096)] = static_cast<char>(rng());
    if (rng() % 4 == 0) bytes.resize(rng() % bytes.size());
    std::ofstream(st, std::ios::binary) << bytes;
    try {
      Checkpoint::open(hf);
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 50);
}

}  // namespace
}  // namespace llm
