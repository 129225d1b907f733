#include "tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "error.h"
#include "test_support.h"

namespace llm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::vector<std::string>& corpus() {
  static const std::vector<std::string> texts = {
      "",
      "Once upon a time",
      "Hello world",
      "The quick brown fox jumps over the lazy dog.",
      "Lily and Ben went to the park. They saw a big, red ball!",
      "What? No... yes; maybe: (really) [sure] {ok} \"quoted\" 'single' - dash_under/slash\\back",
      "1234567890 3.14159 -42 +7 100% $5 #1 @home a&b x*y=z ~^`|<>",
      "multiple   spaces    here",
      "   leading spaces",
      "trailing spaces   ",
      " ",
      "  ",
      "line one\nline two\n\nline four\n",
      "\n",
      "\nstarts with a newline",
      "tab\tseparated\tvalues\r\nCRLF",
      "héllo wörld",
      "Ünïcödé façade naïve café résumé ñ",
      "日本語",
      "日本語のテキストです。",
      "🙂",
      "emoji 🙂🎉👍🏽 mixed with text",
      "Ελληνικά, русский, עברית, العربية, हिन्दी, 한국어",
      "\xE2\x80\x9Csmart quotes\xE2\x80\x9D and \xE2\x80\x94 dashes \xE2\x80\xA6 \xE2\x82\xAC 100",
      "non\xC2\xA0"
      "breaking space",
      "literal specials: <s> </s> <unk> <0x41> <0xE6>",
      "zero\x01"
      "control\x7F"
      "chars",
  };
  return texts;
}

// Concatenates decode_piece over `ids` through a Utf8StreamDecoder, as a streaming app would.
std::string decode_all(const Tokenizer& tok, const std::vector<int>& ids) {
  Utf8StreamDecoder dec;
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    out += dec.push(tok.decode_piece(i == 0 ? -1 : ids[i - 1], ids[i]));
  }
  return out + dec.flush();
}

std::string long_text() {
  std::string base =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine "
      "with her dog, Max — 日本語 🙂 héllo!  \n";
  std::string text;
  while (text.size() < 6000) text += base;
  return text;
}

void write_file(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void expect_same_encoding(const std::string& bin_path, const std::string& model_path) {
  auto bin = load_tokenizer(bin_path);
  auto spm = load_tokenizer(model_path);
  EXPECT_EQ(bin->kind(), "llama2c");
  EXPECT_EQ(spm->kind(), "sentencepiece");
  EXPECT_EQ(bin->vocab_size(), spm->vocab_size());
  EXPECT_EQ(bin->bos_id(), 1);
  EXPECT_EQ(bin->eos_id(), 2);
  EXPECT_EQ(spm->bos_id(), 1);
  EXPECT_EQ(spm->eos_id(), 2);
  std::vector<std::string> texts = corpus();
  texts.push_back(long_text());
  for (const auto& text : texts) {
    for (bool bos : {false, true}) {
      EXPECT_EQ(bin->encode(text, bos), spm->encode(text, bos)) << "text: '" << text << "' bos=" << bos;
    }
  }
  // The decoded pieces agree too, token by token.
  for (const auto& text : texts) {
    auto ids = spm->encode(text, true);
    for (size_t i = 1; i < ids.size(); ++i) {
      EXPECT_EQ(bin->decode_piece(ids[i - 1], ids[i]), spm->decode_piece(ids[i - 1], ids[i]))
          << "token " << ids[i] << " in '" << text << "'";
    }
  }
}

TEST(Tokenizer, Tok512BinAndModelEncodeIdentically) {
  LLM_REQUIRE_MODEL(bin, "tok512.bin");
  LLM_REQUIRE_MODEL(model, "tok512.model");
  expect_same_encoding(bin, model);
  EXPECT_EQ(load_tokenizer(bin)->vocab_size(), 512);
}

TEST(Tokenizer, Llama2BinAndModelEncodeIdentically) {
  LLM_REQUIRE_MODEL(bin, "llama2-tokenizer.bin");
  LLM_REQUIRE_MODEL(model, "llama2-tokenizer.model");
  expect_same_encoding(bin, model);
  EXPECT_EQ(load_tokenizer(bin)->vocab_size(), 32000);
}

TEST(Tokenizer, KnownIds) {
  // Expected ids from a direct Python port of llama2.c run.c's encode(), and for Llama 2 the ids
  // that Hugging Face's LlamaTokenizer gives.
  for (const char* file : {"tok512.bin", "tok512.model"}) {
    LLM_REQUIRE_MODEL(path, file);
    auto tok = load_tokenizer(path);
    auto ids = tok->encode("Once upon a time", true);
    EXPECT_THAT(ids, ElementsAre(1, 403, 407, 261, 378)) << file;
    EXPECT_EQ(decode_all(*tok, ids), "Once upon a time") << file;
    EXPECT_EQ(tok->decode_piece(1, 403), "Once") << file;  // leading space dropped after BOS
    EXPECT_EQ(tok->decode_piece(403, 407), " upon") << file;
    EXPECT_THAT(tok->encode("Hello world", true), ElementsAre(1, 346, 306, 414, 263, 304, 341)) << file;
  }
  for (const char* file : {"llama2-tokenizer.bin", "llama2-tokenizer.model"}) {
    LLM_REQUIRE_MODEL(path, file);
    auto tok = load_tokenizer(path);
    EXPECT_THAT(tok->encode("Hello world", true), ElementsAre(1, 15043, 3186)) << file;
    EXPECT_THAT(tok->encode("Once upon a time", true), ElementsAre(1, 9038, 2501, 263, 931)) << file;
    EXPECT_THAT(tok->encode("Once upon a time", false), ElementsAre(9038, 2501, 263, 931)) << file;
    EXPECT_TRUE(tok->encode("", false).empty()) << file;
    EXPECT_THAT(tok->encode("", true), ElementsAre(1)) << file;
  }
}

TEST(Tokenizer, RoundTripsCorpus) {
  std::vector<std::string> texts = corpus();
  texts.push_back(long_text());
  for (const char* file : {"tok512.bin", "tok512.model", "llama2-tokenizer.bin", "llama2-tokenizer.model"}) {
    LLM_REQUIRE_MODEL(path, file);
    auto tok = load_tokenizer(path);
    for (const auto& text : texts) {
      EXPECT_EQ(decode_all(*tok, tok->encode(text, true)), text) << file << ": '" << text << "'";
      // Without BOS nothing is stripped: the dummy prefix comes back as a leading space.
      if (!text.empty()) {
        EXPECT_EQ(decode_all(*tok, tok->encode(text, false)), " " + text) << file << ": '" << text << "'";
      }
    }
  }
}

TEST(Tokenizer, ControlTokensDecodeToNothing) {
  for (const char* file : {"tok512.bin", "tok512.model"}) {
    LLM_REQUIRE_MODEL(path, file);
    auto tok = load_tokenizer(path);
    EXPECT_EQ(tok->decode_piece(-1, tok->bos_id()), "") << file;
    EXPECT_EQ(tok->decode_piece(5, tok->eos_id()), "") << file;
  }
}

TEST(Tokenizer, ByteTokensOfOneCharacterPrintOnceWhole) {
  for (const char* file : {"tok512.bin", "tok512.model"}) {
    LLM_REQUIRE_MODEL(path, file);
    auto tok = load_tokenizer(path);
    // tok512 has no piece for 日 (U+65E5, E6 97 A5): it falls back to three byte tokens.
    auto ids = tok->encode("日", true);
    ASSERT_EQ(ids.size(), 5u) << file;  // BOS, " ", <0xE6>, <0x97>, <0xA5>
    EXPECT_EQ(tok->decode_piece(ids[0], ids[1]), "") << file;
    EXPECT_EQ(tok->decode_piece(ids[1], ids[2]), "\xE6") << file;
    EXPECT_EQ(tok->decode_piece(ids[2], ids[3]), "\x97") << file;
    EXPECT_EQ(tok->decode_piece(ids[3], ids[4]), "\xA5") << file;
    Utf8StreamDecoder dec;
    std::vector<std::string> printed;
    for (size_t i = 1; i < ids.size(); ++i) printed.push_back(dec.push(tok->decode_piece(ids[i - 1], ids[i])));
    EXPECT_THAT(printed, ElementsAre("", "", "", "日")) << file;
    EXPECT_EQ(dec.flush(), "");
  }
}

TEST(Tokenizer, ByteTokensAreFoundByPieceText) {
  LLM_REQUIRE_MODEL(path, "tok512.bin");
  auto tok = load_tokenizer(path);
  // A lone newline has no piece: it is byte 0x0A, whose piece "<0x0A>" sits at id 13 in this file.
  EXPECT_THAT(tok->encode("\n", false), ElementsAre(410, 13));
  EXPECT_EQ(tok->decode_piece(410, 13), "\n");
}

TEST(Tokenizer, OutOfRangeIdsThrow) {
  for (const char* file : {"tok512.bin", "tok512.model"}) {
    LLM_REQUIRE_MODEL(path, file);
    auto tok = load_tokenizer(path);
    EXPECT_THROW(tok->decode_piece(1, tok->vocab_size()), Error) << file;
    EXPECT_THROW(tok->decode_piece(1, -1), Error) << file;
    EXPECT_NO_THROW(tok->decode_piece(-5, tok->vocab_size() - 1)) << file;
  }
}

TEST(Tokenizer, LongPromptEncodesQuickly) {
  LLM_REQUIRE_MODEL(path, "llama2-tokenizer.bin");
  auto tok = load_tokenizer(path);
  std::string text;
  while (text.size() < 200000) text += long_text();
  auto start = std::chrono::steady_clock::now();
  auto ids = tok->encode(text, true);
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_GT(ids.size(), 10000u);
  EXPECT_LT(std::chrono::duration<double>(elapsed).count(), 2.0);
  EXPECT_EQ(decode_all(*tok, ids), text);
}

// ---- bad inputs: each an llm::Error naming the path ----

void expect_load_error(const std::string& path, const std::string& also = "") {
  try {
    load_tokenizer(path);
    ADD_FAILURE() << "loading " << path << " did not throw";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(path));
    if (!also.empty()) {
      EXPECT_THAT(e.what(), HasSubstr(also));
    }
  }
}

TEST(Tokenizer, MissingFileIsAnError) {
  test::TempDir dir;
  expect_load_error(dir.file("no-such-tokenizer.model"), "does not exist");
}

TEST(Tokenizer, DirectoryIsAnError) {
  test::TempDir dir;
  expect_load_error(dir.path().string(), "directory");
}

TEST(Tokenizer, EmptyFileIsAnError) {
  test::TempDir dir;
  write_file(dir.file("empty.bin"), "");
  expect_load_error(dir.file("empty.bin"), "empty");
}

TEST(Tokenizer, TruncatedLlama2cFileIsAnError) {
  LLM_REQUIRE_MODEL(path, "tok512.bin");
  const std::string data = read_file(path);
  test::TempDir dir;
  // 4-byte header, then entries of 8 + len bytes; <unk> (5 bytes) ends at 17, "\n<s>\n" at 30.
  // Cut inside the third entry's piece bytes, and inside the fourth entry's length field.
  write_file(dir.file("cut-piece.bin"), data.substr(0, 30 + 8 + 3));
  expect_load_error(dir.file("cut-piece.bin"), "truncated entry 2 at byte offset 30");
  write_file(dir.file("cut-header.bin"), data.substr(0, data.size() - 10));
  expect_load_error(dir.file("cut-header.bin"), "truncated");
  write_file(dir.file("cut-len.bin"), data.substr(0, 47));
  expect_load_error(dir.file("cut-len.bin"), "need 8");
}

TEST(Tokenizer, ImpossibleLlama2cLengthIsAnError) {
  LLM_REQUIRE_MODEL(path, "tok512.bin");
  std::string data = read_file(path);
  test::TempDir dir;
  // Entry 1's length (at byte 17 + 4) claims 100 bytes, more than max_token_length (7).
  std::string bad = data;
  int32_t len = 100;
  std::memcpy(&bad[21], &len, 4);
  write_file(dir.file("long.bin"), bad);
  expect_load_error(dir.file("long.bin"), "piece length 100");
  len = 0;
  std::memcpy(&bad[21], &len, 4);
  write_file(dir.file("zero.bin"), bad);
  expect_load_error(dir.file("zero.bin"), "piece length 0");
}

TEST(Tokenizer, GarbageIsAnError) {
  test::TempDir dir;
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 20; ++trial) {
    std::string data(64 + trial * 97, '\0');
    for (auto& c : data) c = static_cast<char>(rng());
    const std::string file = dir.file("garbage" + std::to_string(trial) + ".bin");
    write_file(file, data);
    expect_load_error(file, "not a SentencePiece model or llama2.c tokenizer.bin");
  }
  write_file(dir.file("text.txt"), "this is just some text, not a tokenizer\n");
  expect_load_error(dir.file("text.txt"), "not a SentencePiece model or llama2.c tokenizer.bin");
}

TEST(Tokenizer, DetectsFormatByContentNotName) {
  LLM_REQUIRE_MODEL(bin, "tok512.bin");
  LLM_REQUIRE_MODEL(model, "tok512.model");
  test::TempDir dir;
  write_file(dir.file("actually-llama2c.model"), read_file(bin));
  write_file(dir.file("actually-spm.bin"), read_file(model));
  EXPECT_EQ(load_tokenizer(dir.file("actually-llama2c.model"))->kind(), "llama2c");
  EXPECT_EQ(load_tokenizer(dir.file("actually-spm.bin"))->kind(), "sentencepiece");
}

// ---- Utf8StreamDecoder ----

const std::string kFffd = "\xEF\xBF\xBD";

std::string decode_bytes(const std::string& bytes) {
  Utf8StreamDecoder dec;
  return dec.push(bytes) + dec.flush();
}

TEST(Utf8StreamDecoder, EmojiSplitIntoSingleBytes) {
  const std::string smile = "🙂";  // F0 9F 99 82
  ASSERT_EQ(smile.size(), 4u);
  Utf8StreamDecoder dec;
  EXPECT_EQ(dec.push(smile.substr(0, 1)), "");
  EXPECT_EQ(dec.push(smile.substr(1, 1)), "");
  EXPECT_EQ(dec.push(smile.substr(2, 1)), "");
  EXPECT_EQ(dec.push(smile.substr(3, 1)), smile);
  EXPECT_EQ(dec.flush(), "");
}

TEST(Utf8StreamDecoder, PassesValidTextThrough) {
  Utf8StreamDecoder dec;
  EXPECT_EQ(dec.push("héllo "), "héllo ");
  EXPECT_EQ(dec.push("日本語 🙂"), "日本語 🙂");
  EXPECT_EQ(dec.push(""), "");
  EXPECT_EQ(dec.flush(), "");
  // Split points in the middle of characters, chunk by chunk.
  const std::string text = "aé日🙂z";
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    Utf8StreamDecoder d;
    std::string out = d.push(text.substr(0, cut));
    out += d.push(text.substr(cut));
    EXPECT_EQ(out + d.flush(), text) << "cut at " << cut;
  }
}

TEST(Utf8StreamDecoder, InvalidBytesBecomeReplacementCharacters) {
  EXPECT_EQ(decode_bytes("a\x80"
                         "b"),
            "a" + kFffd + "b");                                                // stray continuation
  EXPECT_EQ(decode_bytes("\xBF\xBF"), kFffd + kFffd);                          // two strays
  EXPECT_EQ(decode_bytes("\xC0\xAF"), kFffd + kFffd);                          // overlong '/' (C0 lead)
  EXPECT_EQ(decode_bytes("\xE0\x80\xAF"), kFffd + kFffd + kFffd);              // overlong 3-byte
  EXPECT_EQ(decode_bytes("\xED\xA0\x80"), kFffd + kFffd + kFffd);              // UTF-16 surrogate
  EXPECT_EQ(decode_bytes("\xF4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // > U+10FFFF
  EXPECT_EQ(decode_bytes("\xF8\x88\x80\x80\x80"), std::string() + kFffd + kFffd + kFffd + kFffd + kFffd);
  EXPECT_EQ(decode_bytes("x\xFFy"), "x" + kFffd + "y");  // bad lead byte
  // A truncated sequence interrupted by a new lead byte or ASCII: one U+FFFD for the fragment.
  EXPECT_EQ(decode_bytes("\xE6\x97\xE6\x97\xA5"), kFffd + "日");
  EXPECT_EQ(decode_bytes("\xF0\x9F\x99"
                         "a"),
            kFffd + "a");
  EXPECT_EQ(decode_bytes("\xC3"
                         "é"),
            kFffd + "é");
}

TEST(Utf8StreamDecoder, InterruptedSequenceAcrossPushes) {
  Utf8StreamDecoder dec;
  EXPECT_EQ(dec.push("\xE6\x97"), "");
  EXPECT_EQ(dec.push("\xF0\x9F"), kFffd);  // the E6 97 fragment is dead; F0 9F is held
  EXPECT_EQ(dec.push("\x99\x82"), "🙂");
  EXPECT_EQ(dec.flush(), "");
}

TEST(Utf8StreamDecoder, FlushTurnsIncompleteTailIntoReplacementAndResets) {
  Utf8StreamDecoder dec;
  EXPECT_EQ(dec.push("ok\xF0\x9F\x99"), "ok");
  EXPECT_EQ(dec.flush(), kFffd);
  EXPECT_EQ(dec.flush(), "");
  EXPECT_EQ(dec.push("\x82"), kFffd);  // nothing left of the emoji: a stray continuation byte
  EXPECT_EQ(dec.push("é"), "é");
  EXPECT_EQ(dec.flush(), "");
}

}  // namespace
}  // namespace llm
