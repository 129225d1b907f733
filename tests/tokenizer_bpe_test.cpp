// Byte-level BPE on a small hand-made vocabulary whose right answers are worked out by hand: merges by
// rank (not left to right), Llama 3's pre-tokenizer (digits in threes, newlines apart), bytes of non-ASCII
// text, added tokens matched verbatim, decoding back to the exact text; the same vocabulary as a
// tokenizer.json and as a GGUF `gpt2` vocabulary tokenizes alike; unsupported files are named.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>

#include "error.h"
#include "gguf_writer.h"
#include "test_support.h"
#include "tokenizer.h"
#include "tokenizer_internal.h"

namespace llm {
namespace {

using nlohmann::json;
using testing::HasSubstr;

// GPT-2 characters: 'Ġ' is the space byte, 'Ċ' the newline, "Ã©" the UTF-8 bytes of 'é'.
const std::vector<std::string> kTokens = {"a", "b", "c", "Ġ",  "ab", "abc", "Ġa", "Ċ", "!",
                                          "1", "2", "3", "12", "4",  "Ã",   "©",  "Ã©"};
const std::vector<std::string> kMerges = {"a b", "ab c", "Ġ a", "1 2", "Ã ©"};

std::string write_tokenizer_json(const test::TempDir& dir, const json& pre_tokenizer) {
  json vocab = json::object();
  for (size_t i = 0; i < kTokens.size(); ++i) vocab[kTokens[i]] = i;
  const json j = {{"version", "1.0"},
                  {"added_tokens",
                   {{{"id", 20}, {"content", "<|begin_of_text|>"}, {"special", true}},
                    {{"id", 21}, {"content", "<|end_of_text|>"}, {"special", true}}}},
                  {"pre_tokenizer", pre_tokenizer},
                  {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", kMerges}}}};
  // ids 17..19 are not used: fill them so ids stay dense
  json k = j;
  k["model"]["vocab"]["x"] = 17, k["model"]["vocab"]["y"] = 18, k["model"]["vocab"]["z"] = 19;
  const std::string path = dir.file("tokenizer.json");
  std::ofstream(path) << k.dump();
  return path;
}

json llama3_pre_tokenizer() {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", detail::kLlama3Pattern}}}, {"behavior", "Isolated"}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
}

std::string decode_all(const Tokenizer& t, const std::vector<int>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += t.decode_piece(i ? ids[i - 1] : -1, ids[i]);
  return s;
}

void expect_hand_worked_answers(const Tokenizer& t) {
  // " abc": a-b (rank 0) merges before Ġ-a (rank 2), so Ġ stays apart: [Ġ, abc], not [Ġa, ...]
  EXPECT_EQ(t.encode("abc abc", false), (std::vector<int>{5, 3, 5}));
  // digits go in threes (Llama 3): "123" "4"; 1-2 merges, 3 stays
  EXPECT_EQ(t.encode("1234", false), (std::vector<int>{12, 11, 13}));
  // é is two bytes, Ã and ©, merged into one token; decoding gives the bytes back
  EXPECT_EQ(t.encode("é", false), (std::vector<int>{16}));
  EXPECT_EQ(t.decode_piece(-1, 16), "é");
  // newlines are pieces of their own
  EXPECT_EQ(t.encode("a\n\nb", false), (std::vector<int>{0, 7, 7, 1}));
  // added tokens are whole tokens wherever they stand; BOS first when asked
  EXPECT_EQ(t.encode("ab<|end_of_text|>c", true), (std::vector<int>{20, 4, 21, 2}));
  EXPECT_EQ(t.bos_id(), 20);
  EXPECT_EQ(t.eos_id(), 21);
  EXPECT_EQ(t.vocab_size(), 22);
  for (const char* text : {"abc abc", "1234", "é!", "a\n\nb", "cab ba 21"})
    EXPECT_EQ(decode_all(t, t.encode(text, false)), text) << text;
}

TEST(ByteLevelBpe, TokenizerJsonGivesTheHandWorkedAnswers) {
  test::TempDir dir;
  const auto t = load_tokenizer(write_tokenizer_json(dir, llama3_pre_tokenizer()));
  EXPECT_EQ(t->kind(), "byte-level BPE");
  expect_hand_worked_answers(*t);
}

TEST(ByteLevelBpe, GgufGpt2VocabularyTokenizesAlike) {
  test::TempDir dir;
  gguf::Writer g;
  g.set_string("general.architecture", "llama");
  g.set_string("tokenizer.ggml.model", "gpt2");
  g.set_string("tokenizer.ggml.pre", "llama-bpe");
  std::vector<std::string> tokens = kTokens;
  tokens.insert(tokens.end(), {"x", "y", "z", "<|begin_of_text|>", "<|end_of_text|>"});
  std::vector<int32_t> types(tokens.size(), 1);
  types[20] = types[21] = 3;
  g.set_strings("tokenizer.ggml.tokens", tokens);
  g.set_strings("tokenizer.ggml.merges", kMerges);
  g.set_i32s("tokenizer.ggml.token_type", types);
  g.set_u32("tokenizer.ggml.bos_token_id", 20);
  g.set_u32("tokenizer.ggml.eos_token_id", 21);
  g.write(dir.file("v.gguf"));
  expect_hand_worked_answers(*load_tokenizer(dir.file("v.gguf")));
}

TEST(ByteLevelBpe, UnsupportedTokenizerJsonFilesAreNamed) {
  test::TempDir dir;
  auto error_of = [&](const json& j) {
    std::ofstream(dir.file("t.json")) << j.dump();
    try {
      load_tokenizer(dir.file("t.json"));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // Llama 2's tokenizer.json: BPE over Metaspace with byte fallback, not byte-level
  EXPECT_THAT(
      error_of({{"model", {{"type", "BPE"}, {"vocab", json::object()}}}, {"pre_tokenizer", {{"type", "Metaspace"}}}}),
      HasSubstr("without a ByteLevel pre-tokenizer (SentencePiece style, e.g. Llama 2) is not supported"));
  EXPECT_THAT(error_of({{"model", {{"type", "Unigram"}}}}),
              HasSubstr("tokenizer model type 'Unigram' is not supported"));
  EXPECT_THAT(
      error_of({{"model", {{"type", "BPE"}, {"vocab", {{"a", "zero"}}}}}, {"pre_tokenizer", {{"type", "ByteLevel"}}}}),
      HasSubstr("t.json: vocab entry 'a' has id \"zero\", expected an integer from 0 to 16777216"));
  // ids as written, not wrapped (4294967296 is not 0) or converted (true is not 1)
  for (const json& id : {json(4294967296), json(true), json(-1), json(2.5)})
    EXPECT_THAT(error_of({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", id}}}}},
                          {"pre_tokenizer", {{"type", "ByteLevel"}}}}),
                HasSubstr("vocab entry 'b' has id " + id.dump() + ", expected an integer"));
  EXPECT_THAT(error_of({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}}},
                        {"pre_tokenizer", {{"type", "ByteLevel"}}},
                        {"added_tokens", {{{"id", "one"}, {"content", "<s>"}}}}}),
              HasSubstr("added token '<s>' has id \"one\""));
  EXPECT_THAT(error_of({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}}},
                        {"pre_tokenizer", {{"type", "ByteLevel"}}},
                        {"added_tokens", {{{"id", 1}, {"content", 7}}}}}),
              HasSubstr("t.json: malformed tokenizer.json"));
  EXPECT_THAT(error_of({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 2}}}}},
                        {"pre_tokenizer", {{"type", "ByteLevel"}}}}),
              HasSubstr("token id 1 has no entry"));
  EXPECT_THAT(error_of({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}}},
                        {"pre_tokenizer",
                         {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}}, {{"type", "ByteLevel"}}}}}}}),
              HasSubstr("the pre-tokenizer regex does not compile"));
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// Damaged tokenizer.json files give a tokenizer or an llm::Error, never a crash; whatever loads still
// encodes and decodes without faulting.
TEST(ByteLevelBpe, DamagedTokenizerJsonNeverCrashes) {
  test::TempDir dir;
  std::ifstream in(write_tokenizer_json(dir, llama3_pre_tokenizer()));
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::mt19937 rng(3);
  int errors = 0, loaded = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::string text = good;
    for (int f = 0; f < 1 + static_cast<int>(rng() % 4); ++f)
      text[rng() % text.size()] = static_cast<char>(rng() % 128);
    std::ofstream(dir.file("bad.json")) << text;
    try {
      const auto t = load_tokenizer(dir.file("bad.json"));
      for (int id : t->encode("abc abc 1234 é\n<|end_of_text|>", true)) t->decode_piece(-1, id);
      ++loaded;
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_EQ(errors + loaded, 400);
  EXPECT_GT(errors, 50);
}

}  // namespace
}  // namespace llm
