// GGUF models: stories260K converted to GGUF tells the llama2.c file's story; each tensor type decodes to
// the values its bits stand for (known bit patterns, not our own encoder); corrupt and unsupported files
// get errors that name the file and the part.
#include "gguf.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>

#include "checkpoint.h"
#include "engine.h"
#include "error.h"
#include "gguf_writer.h"
#include "language_model.h"
#include "model_export.h"
#include "test_support.h"
#include "tokenizer.h"
#include "tokenizer_internal.h"

namespace llm {
namespace {

using testing::HasSubstr;

TEST(Gguf, Stories260KAsGgufTellsTheLlama2cStoryWithItsOwnTokenizer) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  LLM_REQUIRE_MODEL(tok, "tok512.bin");
  test::TempDir dir;
  const std::string f32 = test::stories_gguf(dir, gguf::TensorType::F32, model);
  Engine ref(test::cpu_config(model, tok)), gguf_engine(test::cpu_config(f32, ""));
  EXPECT_EQ(gguf_engine.tokenizer().vocab_size(), 512);
  for (const char* text : {"Once upon a time", "Tom had a toy car. He said: \"wow\"", "über 3 €"})
    EXPECT_EQ(gguf_engine.tokenizer().encode(text, true), ref.tokenizer().encode(text, true)) << text;
  const auto a = ref.generate("Once upon a time", test::greedy(200));
  const auto b = gguf_engine.generate("Once upon a time", test::greedy(200));
  EXPECT_EQ(b.tokens, a.tokens);
  EXPECT_EQ(b.text, a.text);
  // Same fp32 values through the same code: the same logits, bit for bit.
  Engine again(test::cpu_config(f32, ""));
  EXPECT_EQ(test::max_logit_error(again, ref, 20), 0.0);
}

TEST(Gguf, EveryWeightTypeRunsWithinItsRoundingOfTheFp32Model) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  LLM_REQUIRE_MODEL(tok, "tok512.bin");
  test::TempDir dir;
  LLM_REQUIRE_MODEL(q80, "stories260K_q80.bin");
  Engine ref(test::cpu_config(model, tok));
  // Q8_0's yardstick: the llama2.c int8 file of the same model (fp32 scales; GGUF's are fp16).
  Engine llama2c_int8(test::cpu_config(q80, tok));
  const double int8_err = test::max_logit_error(llama2c_int8, ref, 40);
  std::printf("llama2.c Q8_0 file vs the fp32 file: max relative L2 logit error %.3g over 40 steps\n", int8_err);
  // fp16 keeps 11 significant bits, bf16 8: bounds a few times the rounding carried through 5 layers.
  for (auto [type, bound] : {std::pair{gguf::TensorType::F16, 5e-3},
                             {gguf::TensorType::BF16, 3e-2},
                             {gguf::TensorType::Q8_0, 1.5 * int8_err}}) {
    Engine e(test::cpu_config(test::stories_gguf(dir, type, model), ""));
    const double err = test::max_logit_error(e, ref, 40);
    std::printf("GGUF %s weights vs the fp32 file: max relative L2 logit error %.3g over 40 steps (bound %.2g)\n",
                gguf::tensor_type_name(static_cast<uint32_t>(type)), err, bound);
    EXPECT_LT(err, bound) << gguf::tensor_type_name(static_cast<uint32_t>(type));
    const auto r = e.generate("Once upon a time", test::greedy(30));
    EXPECT_THAT("Once upon a time" + r.text,
                testing::StartsWith("Once upon a time, there was a little girl named Lily."));
  }
}

// A tiny llama model (dim 32, 1 layer, 2 heads, vocab 4), every tensor F32 with non-zero values, for the
// container and type tests; `edit` changes the writer before it writes.
std::string tiny_gguf(const test::TempDir& dir, const std::string& name,
                      const std::function<void(gguf::Writer&)>& edit = {}) {
  gguf::Writer g;
  g.set_string("general.architecture", "llama");
  g.set_u32("llama.context_length", 64);
  g.set_u32("llama.embedding_length", 32);
  g.set_u32("llama.block_count", 1);
  g.set_u32("llama.feed_forward_length", 64);
  g.set_u32("llama.attention.head_count", 2);
  g.set_u32("llama.attention.head_count_kv", 2);
  auto add = [&](const std::string& n, uint64_t cols, uint64_t rows) {
    std::vector<float> v(cols * rows);
    for (size_t i = 0; i < v.size(); ++i) v[i] = 0.01f * static_cast<float>((i * 7) % 13) - 0.05f;
    g.add_tensor(n, rows == 1 ? std::vector<uint64_t>{cols} : std::vector<uint64_t>{cols, rows}, gguf::TensorType::F32,
                 v.data());
  };
  add("token_embd.weight", 32, 4);
  add("output_norm.weight", 32, 1);
  for (const char* t : {"attn_norm", "ffn_norm"}) add(std::string("blk.0.") + t + ".weight", 32, 1);
  for (const char* t : {"attn_q", "attn_k", "attn_v", "attn_output"})
    add(std::string("blk.0.") + t + ".weight", 32, 32);
  add("blk.0.ffn_gate.weight", 32, 64);
  add("blk.0.ffn_up.weight", 32, 64);
  add("blk.0.ffn_down.weight", 64, 32);
  if (edit) edit(g);
  const std::string path = dir.file(name);
  g.write(path);
  return path;
}

TEST(Gguf, TensorTypesDecodeToTheValuesTheirBitsStandFor) {
  test::TempDir dir;
  auto replace_embedding = [](uint32_t type, std::vector<uint8_t> bytes) {
    return [type, bytes](gguf::Writer& g) { g.add_raw_tensor("output.weight", {32, 4}, type, bytes); };
  };
  // fp16: 1, -2, 65504 (largest), 2^-24 (smallest subnormal), -0, 0.333 (0x3555), then 1s.
  std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x8000, 0x3555};
  f16.resize(128, 0x3C00);
  std::vector<uint8_t> bytes(f16.size() * 2);
  std::memcpy(bytes.data(), f16.data(), bytes.size());
  auto ck = Checkpoint::open(tiny_gguf(dir, "f16.gguf", replace_embedding(1, bytes)));
  std::vector<float> row(32);
  ck->weights().classifier.dequantize_row(0, row.data());
  EXPECT_EQ(row[0], 1.0f);
  EXPECT_EQ(row[1], -2.0f);
  EXPECT_EQ(row[2], 65504.0f);
  EXPECT_EQ(row[3], std::ldexp(1.0f, -24));
  EXPECT_TRUE(row[4] == 0.0f && std::signbit(row[4]));
  EXPECT_EQ(row[5], 0.333251953125f);
  EXPECT_FALSE(ck->config().shared_classifier);

  // bf16: 1, -3, 3.140625 (0x4049), then 1s.
  std::vector<uint16_t> bf16 = {0x3F80, 0xC040, 0x4049};
  bf16.resize(128, 0x3F80);
  std::memcpy(bytes.data(), bf16.data(), bytes.size());
  ck = Checkpoint::open(tiny_gguf(dir, "bf16.gguf", replace_embedding(30, bytes)));
  ck->weights().classifier.dequantize_row(0, row.data());
  EXPECT_EQ(row[0], 1.0f);
  EXPECT_EQ(row[1], -3.0f);
  EXPECT_EQ(row[2], 3.140625f);

  // Q8_0: per block an fp16 scale (0x3800 = 0.5, then 0x4000 = 2) and 32 int8 values.
  std::vector<uint8_t> q8;
  for (int b = 0; b < 4; ++b) {
    const uint16_t d = b == 0 ? 0x3800 : 0x4000;
    q8.push_back(static_cast<uint8_t>(d & 0xff));
    q8.push_back(static_cast<uint8_t>(d >> 8));
    for (int i = 0; i < 32; ++i) q8.push_back(static_cast<uint8_t>(static_cast<int8_t>(i == 0 ? -127 : i - 16)));
  }
  ck = Checkpoint::open(tiny_gguf(dir, "q8.gguf", replace_embedding(8, q8)));
  const Matrix& m = ck->weights().classifier;
  EXPECT_EQ(m.type, WeightType::Q8_0);
  m.dequantize_row(0, row.data());
  EXPECT_EQ(row[0], -63.5f);
  EXPECT_EQ(row[1], -7.5f);
  EXPECT_EQ(row[16], 0.0f);
  EXPECT_EQ(row[31], 7.5f);
  m.dequantize_row(1, row.data());
  EXPECT_EQ(row[0], -254.0f);
  EXPECT_EQ(row[31], 30.0f);
}

TEST(Gguf, CorruptAndUnsupportedFilesGetErrorsNamingThePart) {
  test::TempDir dir;
  const std::string good = tiny_gguf(dir, "good.gguf");
  EXPECT_NO_THROW(Checkpoint::open(good));

  // truncated: the last tensor's data cut off
  const std::string bytes = test::read_all(good);
  std::ofstream(dir.file("cut.gguf"), std::ios::binary) << bytes.substr(0, bytes.size() - 100);
  EXPECT_THAT(test::checkpoint_error(dir.file("cut.gguf")), HasSubstr("runs past the end of the"));
  // truncated inside the header: counts that cannot fit, then a cut inside the metadata
  std::ofstream(dir.file("head.gguf"), std::ios::binary) << bytes.substr(0, 40);
  EXPECT_THAT(test::checkpoint_error(dir.file("head.gguf")),
              HasSubstr("11 tensors and 7 metadata entries, impossible in 40 bytes"));
  std::ofstream(dir.file("meta.gguf"), std::ios::binary) << bytes.substr(0, 300);
  EXPECT_THAT(test::checkpoint_error(dir.file("meta.gguf")), HasSubstr("GGUF: truncated"));
  // another version
  std::string v2 = bytes;
  v2[4] = 2;
  std::ofstream(dir.file("v2.gguf"), std::ios::binary) << v2;
  EXPECT_THAT(test::checkpoint_error(dir.file("v2.gguf")), HasSubstr("GGUF version 2; this runtime reads version 3"));

  EXPECT_THAT(test::checkpoint_error(
                  tiny_gguf(dir, "arch.gguf", [](gguf::Writer& g) { g.set_string("general.architecture", "gpt2"); })),
              HasSubstr("GGUF architecture 'gpt2' is not supported"));
  EXPECT_THAT(test::checkpoint_error(tiny_gguf(dir, "key.gguf", [](gguf::Writer& g) { g.erase("llama.block_count"); })),
              HasSubstr("GGUF metadata 'llama.block_count' is missing"));
  EXPECT_THAT(test::checkpoint_error(tiny_gguf(
                  dir, "keytype.gguf", [](gguf::Writer& g) { g.set_string("llama.embedding_length", "wide"); })),
              HasSubstr("'llama.embedding_length' is a string, expected an integer"));
  EXPECT_THAT(test::checkpoint_error(
                  tiny_gguf(dir, "heads.gguf", [](gguf::Writer& g) { g.set_u32("llama.attention.head_count", 3); })),
              HasSubstr("dim 32 is not divisible by n_heads 3"));
  EXPECT_THAT(test::checkpoint_error(
                  tiny_gguf(dir, "q4.gguf",
                            [](gguf::Writer& g) {
                              g.add_raw_tensor("output.weight", {32, 4}, 2, std::vector<uint8_t>(4 * 18 * 1));
                            })),
              HasSubstr("tensor 'output.weight' has type Q4_0 (2); supported: F32, F16, BF16, Q8_0"));
  EXPECT_THAT(
      test::checkpoint_error(tiny_gguf(dir, "shape.gguf",
                                       [](gguf::Writer& g) {
                                         std::vector<float> v(33 * 4, 0.5f);
                                         g.add_tensor("output.weight", {33, 4}, gguf::TensorType::F32, v.data());
                                       })),
      HasSubstr("tensor 'output.weight' has 33 columns, expected 32"));

  EXPECT_THAT(test::checkpoint_error(
                  tiny_gguf(dir, "missing.gguf", [](gguf::Writer& g) { g.remove_tensor("blk.0.ffn_up.weight"); })),
              HasSubstr("GGUF tensor 'blk.0.ffn_up.weight' is missing"));
  EXPECT_THAT(test::checkpoint_error(tiny_gguf(
                  dir, "rope.gguf", [](gguf::Writer& g) { g.set_string("llama.rope.scaling.type", "yarn"); })),
              HasSubstr("llama.rope.scaling.type 'yarn' is not supported"));
  std::ofstream(dir.file("magic.gguf"), std::ios::binary) << "GGUX and more bytes than a header";
  EXPECT_THAT(test::checkpoint_error(dir.file("magic.gguf")), HasSubstr("nor GGUF's 'GGUF'"));
}

TEST(Gguf, TokenizerMetadataThatCannotBeUsedIsNamed) {
  test::TempDir dir;
  auto error_of_tokenizer = [](const std::string& path) {
    try {
      load_tokenizer(path);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_THAT(error_of_tokenizer(tiny_gguf(dir, "none.gguf")), HasSubstr("GGUF has no tokenizer"));
  EXPECT_THAT(error_of_tokenizer(tiny_gguf(dir, "bpe.gguf",
                                           [](gguf::Writer& g) {
                                             g.set_string("tokenizer.ggml.model", "gpt2");
                                             g.set_strings("tokenizer.ggml.tokens", {"a", "b", "c", "d"});
                                           })),
              HasSubstr("GGUF 'tokenizer.ggml.merges' is missing"));
  EXPECT_THAT(error_of_tokenizer(tiny_gguf(dir, "bos.gguf",
                                           [](gguf::Writer& g) {
                                             g.set_string("tokenizer.ggml.model", "llama");
                                             g.set_strings("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "a"});
                                             g.set_u32("tokenizer.ggml.bos_token_id", 3);
                                           })),
              HasSubstr("'tokenizer.ggml.bos_token_id' is 3, but this runtime's llama tokenizer needs 1"));
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// Random damage to a valid file (bytes flipped, the file cut) must give a checkpoint or an llm::Error,
// never a crash or a read outside the file (the ASan build runs this too).
TEST(Gguf, DamagedFilesNeverCrashTheLoader) {
  test::TempDir dir;
  const std::string good = test::read_all(tiny_gguf(dir, "good.gguf"));
  std::mt19937 rng(5);
  int errors = 0, loaded = 0;
  for (int trial = 0; trial < 600; ++trial) {
    std::string bytes = good;
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int f = 0; f < flips; ++f) {
      // mostly the header and metadata, where lengths and offsets live
      const size_t at = rng() % 2 ? rng() % std::min<size_t>(bytes.size(), 1024) : rng() % bytes.size();
      bytes[at] = static_cast<char>(rng());
    }
    if (rng() % 4 == 0) bytes.resize(rng() % bytes.size());
    const std::string path = dir.file("damaged.gguf");
    std::ofstream(path, std::ios::binary) << bytes;
    try {
      Checkpoint::open(path);
      ++loaded;
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_EQ(errors + loaded, 600);
  EXPECT_GT(errors, 100);
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// Llama 3.1 GGUFs carry their RoPE scaling as rope_freqs.weight (one divisor per pair): the frequencies
// then equal the Hugging Face llama3 rule's, which the runtime computes itself for HF directories.
TEST(Gguf, RopeFreqsTensorGivesTheLlama3Frequencies) {
  test::TempDir dir;
  ModelConfig hf;  // the tiny model's head size, with Llama 3.1's scaling
  hf.dim = 32, hf.n_heads = 2, hf.rope_theta = 10000.0f;
  hf.rope_scaling = {8.0f, 1.0f, 4.0f, 16};
  ModelConfig plain = hf;
  plain.rope_scaling.factor = 0;
  std::vector<float> factors(8);
  for (int i = 0; i < 8; ++i) factors[i] = static_cast<float>(rope_frequency(plain, i) / rope_frequency(hf, i));
  const auto ck = Checkpoint::open(tiny_gguf(dir, "rope.gguf", [&](gguf::Writer& g) {
    g.add_tensor("rope_freqs.weight", {8}, gguf::TensorType::F32, factors.data());
  }));
  ASSERT_EQ(ck->config().rope_freq_factors.size(), 8u);
  int scaled = 0;
  for (int i = 0; i < 8; ++i) {
    EXPECT_NEAR(rope_frequency(ck->config(), i) / rope_frequency(hf, i), 1.0, 1e-6) << i;
    scaled += factors[i] != 1.0f;
  }
  EXPECT_GT(scaled, 0);
  factors[3] = -1.0f;
  EXPECT_THAT(
      test::checkpoint_error(tiny_gguf(
          dir, "bad_rope.gguf",
          [&](gguf::Writer& g) { g.add_tensor("rope_freqs.weight", {8}, gguf::TensorType::F32, factors.data()); })),
      HasSubstr("rope_freqs.weight holds -1, not a positive factor"));
}

}  // namespace
}  // namespace llm
