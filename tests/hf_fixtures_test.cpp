// The Hugging Face loaders against Hugging Face itself: models that transformers built and saved, with the
// logits it computed, and a byte-level BPE that HF tokenizers trained, with its encodings
// (tests/data/hf, made by tools/hf_fixtures.py on a machine with torch). Skips, saying how to make them,
// where the fixtures are absent.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine.h"
#include "tokenizer.h"

namespace llm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kFixtures = fs::path(LLM_TEST_DATA_DIR) / "hf";

#define REQUIRE_FIXTURE(path)                                                             \
  if (!fs::exists(path))                                                                  \
  GTEST_SKIP() << (path).string()                                                         \
               << " not made yet: run `python3 tools/hf_fixtures.py --out tests/data/hf " \
                  "--spm tok512.model` where torch and transformers are installed"

TEST(HfFixtures, TransformersModelsGiveTheirLogits) {
  for (const char* name : {"llama2_style", "llama3_style"}) {
    const fs::path dir = kFixtures / name;
    REQUIRE_FIXTURE(dir / "reference.json");
    const json ref = json::parse(std::ifstream(dir / "reference.json"));
    RunConfig c;
    c.model = dir.string();  // the directory's own tokenizer
    c.backend_order = {"mha_cpu"};
    c.plugin_dirs = {LLM_PLUGIN_DIR};
    c.threads = 2;
    Engine e(c);
    const auto ids = ref["token_ids"].get<std::vector<int>>();
    const auto& logits = ref["logits"];
    const int vocab = e.model().config().vocab_size;
    double worst = 0;
    for (size_t pos = 0; pos < ids.size(); ++pos) {
      const float* got = e.model().forward({SequenceChunk{0, static_cast<int>(pos), {ids[pos]}}});
      const auto want = logits[pos].get<std::vector<double>>();
      ASSERT_EQ(static_cast<int>(want.size()), vocab);
      double err = 0, norm = 0;
      for (int i = 0; i < vocab; ++i) {
        ASSERT_TRUE(std::isfinite(got[i])) << name << " position " << pos;
        err += (got[i] - want[i]) * (got[i] - want[i]);
        norm += want[i] * want[i];
      }
      worst = std::max(worst, std::sqrt(err / norm));
    }
    std::printf("%s: max relative L2 error against transformers' logits over %zu positions: %.3g (bound 1e-4)\n", name,
                ids.size(), worst);
    EXPECT_LT(worst, 1e-4) << name;
  }
}

TEST(HfFixtures, ByteLevelBpeEncodesAsHfTokenizers) {
  const fs::path dir = kFixtures / "bpe";
  REQUIRE_FIXTURE(dir / "cases.json");
  const auto tok = load_tokenizer((dir / "tokenizer.json").string());
  const json cases = json::parse(std::ifstream(dir / "cases.json"));
  int n = 0;
  for (const auto& c : cases["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto ids = tok->encode(text, false);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int>>()) << text;
    std::string back;
    for (size_t i = 0; i < ids.size(); ++i) back += tok->decode_piece(i ? ids[i - 1] : -1, ids[i]);
    // decoding drops BOS/EOS; other special tokens and all text come back as they were
    std::string expected = text;
    for (const char* s : {"<|begin_of_text|>", "<|end_of_text|>"})
      for (size_t at; (at = expected.find(s)) != std::string::npos;) expected.erase(at, std::strlen(s));
    EXPECT_EQ(back, expected);
    ++n;
  }
  EXPECT_GT(n, 10);
}

}  // namespace
}  // namespace llm
