// Checkpoint reader/writer: round trips in every format, the real stories260K files, and rejection
// of malformed files with messages that name the file and the mismatch.
#include "checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "error.h"
#include "random_checkpoint.h"
#include "test_support.h"

namespace llm {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

ModelConfig small_config(bool shared) {
  ModelConfig c;
  c.dim = 64;
  c.hidden_dim = 96;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 50;
  c.max_seq_len = 16;
  c.shared_classifier = shared;
  return c;
}

// A tiny shape whose int8 arrays have odd sizes, so Q8_0 scales land at unaligned offsets.
ModelConfig odd_config() {
  ModelConfig c;
  c.dim = 6;
  c.hidden_dim = 9;
  c.n_layers = 2;
  c.n_heads = 3;
  c.n_kv_heads = 1;
  c.vocab_size = 7;
  c.max_seq_len = 4;
  c.shared_classifier = false;
  return c;
}

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Fills tensors with values that depend on the name and index, and remembers them.
struct Recorder {
  std::map<std::string, std::vector<float>> tensors;
  std::vector<std::string> order;

  TensorFiller filler() {
    return [this](const std::string& name, float* data, std::size_t count) {
      uint64_t h = std::hash<std::string>{}(name);
      for (std::size_t i = 0; i < count; ++i) {
        float v = static_cast<float>(static_cast<double>(mix(h + i) >> 40) / 8388608.0 - 1.0);
        if (i % 17 == 5) v *= 40.0f;  // some outliers, so groups get different scales
        if (i % 23 == 0) v = 0.0f;
        data[i] = v;
      }
      tensors[name].assign(data, data + count);
      order.push_back(name);
    };
  }
};

std::vector<float> matrix_values(const Matrix& m) {
  std::vector<float> out(static_cast<std::size_t>(m.rows) * m.cols);
  for (int r = 0; r < m.rows; ++r) m.dequantize_row(r, out.data() + static_cast<std::size_t>(r) * m.cols);
  return out;
}

std::vector<float> vector_values(const float* p, int n) { return std::vector<float>(p, p + n); }

// name -> the tensor as the checkpoint presents it (dequantized), plus the matrix when it is one.
std::map<std::string, std::vector<float>> loaded_tensors(const Checkpoint& ck) {
  const ModelConfig& c = ck.config();
  const ModelWeights& w = ck.weights();
  std::map<std::string, std::vector<float>> t;
  t["token_embedding"] = matrix_values(w.token_embedding);
  if (!c.shared_classifier) t["classifier"] = matrix_values(w.classifier);
  t["rms_final"] = vector_values(w.rms_final, c.dim);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    const std::string p = "layers." + std::to_string(l) + ".";
    t[p + "rms_att"] = vector_values(lw.rms_att, c.dim);
    t[p + "rms_ffn"] = vector_values(lw.rms_ffn, c.dim);
    t[p + "wq"] = matrix_values(lw.wq);
    t[p + "wk"] = matrix_values(lw.wk);
    t[p + "wv"] = matrix_values(lw.wv);
    t[p + "wo"] = matrix_values(lw.wo);
    t[p + "w1"] = matrix_values(lw.w1);
    t[p + "w2"] = matrix_values(lw.w2);
    t[p + "w3"] = matrix_values(lw.w3);
  }
  return t;
}

void expect_config_eq(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.dim, b.dim);
  EXPECT_EQ(a.hidden_dim, b.hidden_dim);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_kv_heads, b.n_kv_heads);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_seq_len, b.max_seq_len);
  EXPECT_EQ(a.shared_classifier, b.shared_classifier);
}

bool is_norm(const std::string& name) { return name.find("rms_") != std::string::npos; }

// Every matrix's shape and type, checked against the config.
void expect_shapes(const Checkpoint& ck) {
  const ModelConfig& c = ck.config();
  const ModelWeights& w = ck.weights();
  auto shape = [](const Matrix& m, int rows, int cols, const char* what) {
    EXPECT_EQ(m.rows, rows) << what;
    EXPECT_EQ(m.cols, cols) << what;
    if (m.type == WeightType::Q8_0) {
      EXPECT_GT(m.group_size, 0) << what;
      EXPECT_EQ(m.cols % m.group_size, 0) << what << ": Q8_0 handed out with unaligned rows";
      EXPECT_EQ(reinterpret_cast<uintptr_t>(m.scales) % alignof(float), 0u) << what;
    } else {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(m.f32) % alignof(float), 0u) << what;
    }
  };
  shape(w.token_embedding, c.vocab_size, c.dim, "token_embedding");
  shape(w.classifier, c.vocab_size, c.dim, "classifier");
  ASSERT_EQ(static_cast<int>(w.layers.size()), c.n_layers);
  for (const LayerWeights& lw : w.layers) {
    shape(lw.wq, c.dim, c.dim, "wq");
    shape(lw.wk, c.kv_dim(), c.dim, "wk");
    shape(lw.wv, c.kv_dim(), c.dim, "wv");
    shape(lw.wo, c.dim, c.dim, "wo");
    shape(lw.w1, c.hidden_dim, c.dim, "w1");
    shape(lw.w2, c.dim, c.hidden_dim, "w2");
    shape(lw.w3, c.hidden_dim, c.dim, "w3");
  }
  if (c.shared_classifier) {
    EXPECT_EQ(w.classifier.f32, w.token_embedding.f32);
    EXPECT_EQ(w.classifier.q, w.token_embedding.q);
  }
}

struct RoundTripCase {
  CheckpointFormat format;
  bool shared;
  int group_size;
};

class CheckpointRoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(CheckpointRoundTrip, ValuesSurvive) {
  const RoundTripCase tc = GetParam();
  test::TempDir dir;
  const std::string path = dir.file("model.bin");
  const ModelConfig config = small_config(tc.shared);
  Recorder rec;
  write_checkpoint(path, config, tc.format, rec.filler(), tc.group_size);

  auto ck = Checkpoint::open(path);
  EXPECT_EQ(ck->path(), path);
  EXPECT_EQ(ck->format(), tc.format);
  expect_config_eq(ck->config(), config);
  expect_shapes(*ck);

  auto loaded = loaded_tensors(*ck);
  ASSERT_EQ(loaded.size(), rec.tensors.size());
  for (const auto& [name, want] : rec.tensors) {
    ASSERT_TRUE(loaded.count(name)) << name;
    const std::vector<float>& got = loaded[name];
    ASSERT_EQ(got.size(), want.size()) << name;
    if (tc.format != CheckpointFormat::V2Q8 || is_norm(name)) {
      for (std::size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << name << "[" << i << "]";
      continue;
    }
    // Q8_0: within half a quantization step of the group (groups run over the flattened matrix).
    const std::size_t gs = static_cast<std::size_t>(tc.group_size);
    for (std::size_t g = 0; g * gs < want.size(); ++g) {
      float wmax = 0;
      for (std::size_t i = g * gs; i < (g + 1) * gs; ++i) wmax = std::max(wmax, std::fabs(want[i]));
      const float step = wmax / 127.0f;
      for (std::size_t i = g * gs; i < (g + 1) * gs; ++i) {
        ASSERT_LE(std::fabs(got[i] - want[i]), 0.5f * step * 1.0001f + 1e-9f) << name << "[" << i << "]";
      }
    }
  }
  if (tc.format == CheckpointFormat::V2Q8) {
    const LayerWeights& l0 = ck->weights().layers[0];
    EXPECT_EQ(l0.wq.type, WeightType::Q8_0);
    EXPECT_EQ(l0.wq.group_size, tc.group_size);
    // w2 has hidden_dim (96) columns: row-aligned for group 32, converted to fp32 for group 64.
    EXPECT_EQ(l0.w2.type, config.hidden_dim % tc.group_size == 0 ? WeightType::Q8_0 : WeightType::F32);
  } else {
    EXPECT_EQ(ck->weights().layers[0].wq.type, WeightType::F32);
  }

  // The file's size is what the format implies.
  const auto L = static_cast<uint64_t>(config.n_layers), dim = static_cast<uint64_t>(config.dim),
             hid = static_cast<uint64_t>(config.hidden_dim), kvd = static_cast<uint64_t>(config.kv_dim()),
             V = static_cast<uint64_t>(config.vocab_size), S = static_cast<uint64_t>(config.max_seq_len);
  const uint64_t per_layer = 2 * dim * dim + 2 * kvd * dim + 3 * hid * dim;
  const uint64_t matrices = V * dim + L * per_layer + (tc.shared ? 0 : V * dim);
  const uint64_t norms = (2 * L + 1) * dim;
  uint64_t expected = 0;
  switch (tc.format) {
    case CheckpointFormat::LegacyF32: expected = 28 + 4 * (matrices + norms + S * dim / config.n_heads); break;
    case CheckpointFormat::V1F32: expected = 256 + 4 * (matrices + norms); break;
    case CheckpointFormat::V2Q8: expected = 256 + 4 * norms + matrices + 4 * matrices / tc.group_size; break;
    case CheckpointFormat::Gguf:
    case CheckpointFormat::HfSafetensors: FAIL() << "not a llama2.c format"; break;
  }
  EXPECT_EQ(std::filesystem::file_size(path), expected);
}

INSTANTIATE_TEST_SUITE_P(CheckpointFormats, CheckpointRoundTrip,
                         ::testing::Values(RoundTripCase{CheckpointFormat::LegacyF32, true, 32},
                                           RoundTripCase{CheckpointFormat::LegacyF32, false, 32},
                                           RoundTripCase{CheckpointFormat::V1F32, true, 32},
                                           RoundTripCase{CheckpointFormat::V1F32, false, 32},
                                           RoundTripCase{CheckpointFormat::V2Q8, true, 32},
                                           RoundTripCase{CheckpointFormat::V2Q8, false, 32},
                                           RoundTripCase{CheckpointFormat::V2Q8, true, 64},
                                           RoundTripCase{CheckpointFormat::V2Q8, false, 64}),
                         [](const ::testing::TestParamInfo<RoundTripCase>& info) {
                           const char* f = info.param.format == CheckpointFormat::LegacyF32 ? "Legacy"
                                           : info.param.format == CheckpointFormat::V1F32   ? "V1"
                                                                                            : "Q80";
                           return std::string(f) + (info.param.shared ? "Shared" : "Unshared") + "G" +
                                  std::to_string(info.param.group_size);
                         });

TEST(Checkpoint, TensorsAreRequestedInFileOrder) {
  test::TempDir dir;
  Recorder rec;
  ModelConfig c = small_config(false);
  write_checkpoint(dir.file("v1.bin"), c, CheckpointFormat::V1F32, rec.filler());
  const std::vector<std::string> want_prefix = {"layers.0.rms_att", "layers.1.rms_att", "layers.0.rms_ffn",
                                                "layers.1.rms_ffn", "rms_final",        "token_embedding",
                                                "layers.0.wq",      "layers.1.wq",      "layers.0.wk"};
  ASSERT_GE(rec.order.size(), want_prefix.size());
  EXPECT_EQ(std::vector<std::string>(rec.order.begin(), rec.order.begin() + want_prefix.size()), want_prefix);
  EXPECT_EQ(rec.order.back(), "classifier");

  Recorder legacy;
  write_checkpoint(dir.file("legacy.bin"), c, CheckpointFormat::LegacyF32, legacy.filler());
  EXPECT_EQ(legacy.order.front(), "token_embedding");
  EXPECT_EQ(legacy.order[1], "layers.0.rms_att");
  EXPECT_EQ(legacy.order.back(), "classifier");
}

TEST(Checkpoint, LegacyWritesRopeTables) {
  test::TempDir dir;
  const std::string path = dir.file("legacy.bin");
  const ModelConfig c = small_config(true);
  Recorder rec;
  write_checkpoint(path, c, CheckpointFormat::LegacyF32, rec.filler());
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const int hs = c.head_dim(), half = hs / 2;
  const std::size_t floats_before = static_cast<std::size_t>(c.vocab_size) * c.dim +
                                    2 * c.n_layers * (c.dim + c.dim * c.dim + c.kv_dim() * c.dim) +
                                    3 * c.n_layers * c.hidden_dim * c.dim + c.dim;
  const std::size_t real_at = 28 + 4 * floats_before;
  const std::size_t imag_at = real_at + 4 * c.max_seq_len * half;
  ASSERT_EQ(bytes.size(), imag_at + 4 * c.max_seq_len * half);
  auto at = [&](std::size_t off) {
    float v;
    std::memcpy(&v, bytes.data() + off, 4);
    return v;
  };
  for (int pos : {0, 1, 7, 15}) {
    for (int i : {0, 1, half - 1}) {
      const double freq = 1.0 / std::pow(10000.0, 2.0 * i / hs);
      EXPECT_NEAR(at(real_at + 4 * (pos * half + i)), std::cos(pos * freq), 1e-6) << pos << "," << i;
      EXPECT_NEAR(at(imag_at + 4 * (pos * half + i)), std::sin(pos * freq), 1e-6) << pos << "," << i;
    }
  }
}

TEST(Checkpoint, Q80UnalignedScalesAreCopied) {
  // dim 6, group 3: int8 arrays of 42, 36, 12, 54 ... bytes leave the scales after them unaligned.
  test::TempDir dir;
  const std::string path = dir.file("odd.bin");
  const ModelConfig c = odd_config();
  Recorder rec;
  write_checkpoint(path, c, CheckpointFormat::V2Q8, rec.filler(), 3);
  auto ck = Checkpoint::open(path);
  expect_shapes(*ck);
  EXPECT_EQ(ck->weights().token_embedding.type, WeightType::Q8_0);
  EXPECT_EQ(ck->weights().layers[1].w2.type, WeightType::Q8_0);  // 9 columns, group 3: aligned
  auto loaded = loaded_tensors(*ck);
  for (const auto& [name, want] : rec.tensors) {
    const std::vector<float>& got = loaded[name];
    ASSERT_EQ(got.size(), want.size()) << name;
    for (std::size_t g = 0; g * 3 < want.size(); ++g) {
      float wmax = 0;
      for (std::size_t i = g * 3; i < g * 3 + 3; ++i) wmax = std::max(wmax, std::fabs(want[i]));
      for (std::size_t i = g * 3; i < g * 3 + 3; ++i) {
        ASSERT_LE(std::fabs(got[i] - want[i]), 0.5f * wmax / 127.0f * 1.0001f + 1e-9f) << name << "[" << i << "]";
      }
    }
  }
}

TEST(Checkpoint, QuantizationMatchesExportPy) {
  // A group holding max 127 -> scale 1, values round half to even, a zero group gets q 0.
  test::TempDir dir;
  const std::string path = dir.file("q.bin");
  ModelConfig c = odd_config();
  write_checkpoint(
      path, c, CheckpointFormat::V2Q8,
      [](const std::string& name, float* data, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) data[i] = 0.0f;
        if (name == "token_embedding") {
          const float v[6] = {127.0f, 2.5f, -3.5f, 0.0f, 0.0f, 0.0f};
          std::memcpy(data, v, sizeof v);
        }
      },
      3);
  auto ck = Checkpoint::open(path);
  std::vector<float> row(6);
  ck->weights().token_embedding.dequantize_row(0, row.data());
  EXPECT_EQ(row, (std::vector<float>{127.0f, 2.0f, -4.0f, 0.0f, 0.0f, 0.0f}));
}

TEST(Checkpoint, FormatNames) {
  EXPECT_STREQ(checkpoint_format_name(CheckpointFormat::LegacyF32), "legacy fp32");
  EXPECT_STREQ(checkpoint_format_name(CheckpointFormat::V1F32), "v1 fp32");
  EXPECT_STREQ(checkpoint_format_name(CheckpointFormat::V2Q8), "v2 Q8_0");
  EXPECT_STREQ(weight_type_name(WeightType::F32), "f32");
  EXPECT_STREQ(weight_type_name(WeightType::Q8_0), "q8_0");
}

TEST(Checkpoint, MatrixBytesAndDequantizeUnalignedRow) {
  // 2 x 3 matrix, group 2: row 1 starts in the middle of group 1.
  const int8_t q[6] = {1, -2, 3, 4, -5, 6};
  const float scales[3] = {0.5f, 2.0f, -1.0f};
  Matrix m;
  m.type = WeightType::Q8_0;
  m.rows = 2;
  m.cols = 3;
  m.q = q;
  m.scales = scales;
  m.group_size = 2;
  EXPECT_EQ(m.bytes(), 6u + 3u * 4u);
  float row[3];
  m.dequantize_row(1, row);
  EXPECT_EQ(row[0], 8.0f);
  EXPECT_EQ(row[1], 5.0f);
  EXPECT_EQ(row[2], -6.0f);
  m.dequantize_row(0, row);
  EXPECT_EQ(row[0], 0.5f);
  EXPECT_EQ(row[1], -1.0f);
  EXPECT_EQ(row[2], 6.0f);

  const float f[6] = {1, 2, 3, 4, 5, 6};
  Matrix fm;
  fm.rows = 2;
  fm.cols = 3;
  fm.f32 = f;
  EXPECT_EQ(fm.bytes(), 24u);
  fm.dequantize_row(1, row);
  EXPECT_EQ(row[2], 6.0f);
}

// ---- The real stories260K files ------------------------------------------------------------------

void expect_stories260k_config(const ModelConfig& c) {
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_TRUE(c.shared_classifier);
  EXPECT_EQ(c.head_dim(), 8);
  EXPECT_EQ(c.kv_dim(), 32);
}

TEST(CheckpointStories260K, LegacyF32) {
  LLM_REQUIRE_MODEL(path, "stories260K.bin");
  auto ck = Checkpoint::open(path);
  EXPECT_EQ(ck->format(), CheckpointFormat::LegacyF32);
  expect_stories260k_config(ck->config());
  expect_shapes(*ck);
  // Every matrix once (shared classifier = embedding, read in full as the classifier), 11 norms of
  // 64, one embedding row.
  const std::size_t per_layer = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64;
  const std::size_t want = 4 * (5 * per_layer + 512 * 64 + 11 * 64 + 64);
  EXPECT_EQ(ck->weights().bytes_per_token(), want);
}

TEST(CheckpointStories260K, Q80) {
  LLM_REQUIRE_MODEL(path, "stories260K_q80.bin");
  auto ck = Checkpoint::open(path);
  EXPECT_EQ(ck->format(), CheckpointFormat::V2Q8);
  expect_stories260k_config(ck->config());
  expect_shapes(*ck);
  const LayerWeights& l0 = ck->weights().layers[0];
  EXPECT_EQ(l0.wq.type, WeightType::Q8_0);
  EXPECT_EQ(l0.wq.group_size, 32);
  EXPECT_EQ(l0.w1.type, WeightType::Q8_0);
  EXPECT_EQ(l0.w2.type, WeightType::F32);  // 172 columns, group 32: converted at load
  EXPECT_EQ(ck->weights().token_embedding.type, WeightType::Q8_0);
  // Q8 matrices: 1 byte per value + 4 bytes per 32 values; w2 (5 x 64 x 172) now fp32.
  const std::size_t q8_values = 5 * (2 * 64 * 64 + 2 * 32 * 64 + 2 * 172 * 64) + 512 * 64;
  const std::size_t want = q8_values + q8_values / 32 * 4 + 5 * 64 * 172 * 4 + 11 * 64 * 4 + (64 + 2 * 4);
  EXPECT_EQ(ck->weights().bytes_per_token(), want);
}

TEST(CheckpointStories260K, Q80DequantizesToTheF32FileExactly) {
  LLM_REQUIRE_MODEL(f32_path, "stories260K.bin");
  LLM_REQUIRE_MODEL(q80_path, "stories260K_q80.bin");
  auto f32 = Checkpoint::open(f32_path);
  auto q80 = Checkpoint::open(q80_path);
  auto want = loaded_tensors(*f32);
  auto got = loaded_tensors(*q80);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    const std::vector<float>& g = got[name];
    ASSERT_EQ(g.size(), w.size()) << name;
    std::size_t mismatches = 0, first = 0;
    for (std::size_t i = 0; i < w.size(); ++i) {
      if (std::memcmp(&g[i], &w[i], sizeof(float)) != 0 && mismatches++ == 0) first = i;
    }
    EXPECT_EQ(mismatches, 0u) << name << ": first mismatch at " << first << ": q80 " << g[first] << " vs f32 "
                              << w[first];
  }
  EXPECT_LT(q80->weights().bytes_per_token(), f32->weights().bytes_per_token() / 2);
}

// ---- Malformed files -----------------------------------------------------------------------------

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void put_i32(std::vector<uint8_t>& bytes, std::size_t offset, int32_t v) { std::memcpy(&bytes[offset], &v, 4); }

// Header offsets of the versioned formats.
constexpr std::size_t kVersion = 4, kDim = 8, kHidden = 12, kLayers = 16, kHeads = 20, kKvHeads = 24, kVocab = 28,
                      kSeqLen = 32, kShared = 36, kGroup = 37;

class CheckpointBadInput : public ::testing::Test {
 protected:
  // A valid small file of `format`, returned as bytes to patch.
  std::vector<uint8_t> valid(CheckpointFormat format, bool shared = true) {
    const std::string p = dir_.file("valid.bin");
    Recorder rec;
    write_checkpoint(p, small_config(shared), format, rec.filler());
    return read_bytes(p);
  }
  std::string bad(const std::vector<uint8_t>& bytes) {
    const std::string p = dir_.file("bad" + std::to_string(counter_++) + ".bin");
    write_bytes(p, bytes);
    return p;
  }
  // Opening `path` throws an llm::Error starting with the path and containing every fragment.
  void expect_error(const std::string& path, std::initializer_list<const char*> fragments) {
    try {
      Checkpoint::open(path);
      ADD_FAILURE() << "opening " << path << " succeeded";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), StartsWith(path));
      for (const char* f : fragments) EXPECT_THAT(e.what(), HasSubstr(f));
    }
  }

  test::TempDir dir_;
  int counter_ = 0;
};

TEST_F(CheckpointBadInput, Nonexistent) {
  expect_error(dir_.file("missing.bin"), {"cannot open", "No such file or directory"});
}

TEST_F(CheckpointBadInput, DirectoryWithoutAConfig) {
  expect_error(dir_.path().string(), {"a model directory needs config.json (Hugging Face layout)"});
}

TEST_F(CheckpointBadInput, Empty) { expect_error(bad({}), {"is empty"}); }

TEST_F(CheckpointBadInput, TooSmallForAnyHeader) { expect_error(bad({1, 2}), {"2 bytes", "too small"}); }

TEST_F(CheckpointBadInput, TruncatedLegacyHeader) {
  auto bytes = valid(CheckpointFormat::LegacyF32);
  bytes.resize(20);
  expect_error(bad(bytes), {"20 bytes", "too small for a legacy header of 28 bytes"});
}

TEST_F(CheckpointBadInput, TruncatedVersionedHeader) {
  auto bytes = valid(CheckpointFormat::V1F32);
  bytes.resize(100);
  expect_error(bad(bytes), {"truncated header", "100 bytes", "256"});
}

TEST_F(CheckpointBadInput, WrongMagic) {
  auto bytes = valid(CheckpointFormat::V1F32);
  put_i32(bytes, 0, static_cast<int32_t>(0xdeadbeef));
  expect_error(bad(bytes), {"0xdeadbeef", "neither the version 1/2 magic 0x616b3432", "nor GGUF's 'GGUF'"});
}

TEST_F(CheckpointBadInput, UnsupportedVersion) {
  auto bytes = valid(CheckpointFormat::V1F32);
  put_i32(bytes, kVersion, 3);
  expect_error(bad(bytes), {"unsupported checkpoint version 3", "supported: 1 (fp32) and 2 (Q8_0)"});
}

TEST_F(CheckpointBadInput, ZeroDim) {
  auto bytes = valid(CheckpointFormat::V1F32);
  put_i32(bytes, kDim, 0);
  expect_error(bad(bytes), {"dim is 0, expected a positive value"});
}

TEST_F(CheckpointBadInput, NegativeLayers) {
  auto bytes = valid(CheckpointFormat::V2Q8);
  put_i32(bytes, kLayers, -2);
  expect_error(bad(bytes), {"n_layers is -2, expected a positive value"});
}

TEST_F(CheckpointBadInput, ZeroLegacyVocab) {
  auto bytes = valid(CheckpointFormat::LegacyF32);
  put_i32(bytes, 20, 0);
  expect_error(bad(bytes), {"vocab_size is 0, expected a positive value", "legacy"});
}

TEST_F(CheckpointBadInput, AbsurdDim) {
  auto bytes = valid(CheckpointFormat::V1F32);
  put_i32(bytes, kHidden, 1 << 30);
  expect_error(bad(bytes), {"hidden_dim is 1073741824", "exceeds the limit of 1048576"});
}

TEST_F(CheckpointBadInput, SizeOverflow) {
  auto bytes = valid(CheckpointFormat::V1F32);
  put_i32(bytes, kDim, 1 << 20);
  put_i32(bytes, kHidden, 1 << 20);
  put_i32(bytes, kLayers, 1 << 20);
  put_i32(bytes, kHeads, 1 << 10);
  put_i32(bytes, kKvHeads, 1 << 10);
  put_i32(bytes, kVocab, 1 << 22);
  put_i32(bytes, kSeqLen, 1 << 22);
  expect_error(bad(bytes), {"overflows 64 bits", "dim=1048576"});
}

TEST_F(CheckpointBadInput, DimNotDivisibleByHeads) {
  auto bytes = valid(CheckpointFormat::V1F32);
  put_i32(bytes, kHeads, 6);
  expect_error(bad(bytes), {"dim 64 is not divisible by n_heads 6"});
}

TEST_F(CheckpointBadInput, HeadsNotDivisibleByKvHeads) {
  auto bytes = valid(CheckpointFormat::V2Q8);
  put_i32(bytes, kKvHeads, 3);
  expect_error(bad(bytes), {"n_heads 4 is not divisible by n_kv_heads 3"});
}

TEST_F(CheckpointBadInput, OddHeadSize) {
  auto bytes = valid(CheckpointFormat::LegacyF32);
  put_i32(bytes, 0, 60);  // dim 60, 4 heads: head size 15
  expect_error(bad(bytes), {"head size 15", "odd"});
}

TEST_F(CheckpointBadInput, TruncatedBody) {
  for (CheckpointFormat f : {CheckpointFormat::LegacyF32, CheckpointFormat::V1F32, CheckpointFormat::V2Q8}) {
    auto bytes = valid(f);
    const std::string want_size = std::to_string(bytes.size()) + " bytes";
    const std::string got_size = std::to_string(bytes.size() - 1) + " bytes";
    bytes.pop_back();
    expect_error(bad(bytes), {"truncated", want_size.c_str(), got_size.c_str(), "dim=64", "(1 bytes missing)"});
  }
}

TEST_F(CheckpointBadInput, TrailingBytes) {
  auto bytes = valid(CheckpointFormat::V2Q8, false);
  bytes.push_back(0);
  bytes.push_back(0);
  expect_error(bad(bytes), {"trailing bytes", "group_size=32", "shared_classifier=0", "(2 bytes too many)"});
}

TEST_F(CheckpointBadInput, LegacyUnsharedFlagChangesExpectedSize) {
  // Flipping vocab_size's sign claims a separate classifier the file does not have.
  auto bytes = valid(CheckpointFormat::LegacyF32, true);
  put_i32(bytes, 20, -50);
  expect_error(bad(bytes), {"truncated", "shared_classifier=0"});
}

TEST_F(CheckpointBadInput, ZeroGroupSize) {
  auto bytes = valid(CheckpointFormat::V2Q8);
  put_i32(bytes, kGroup, 0);
  expect_error(bad(bytes), {"group_size is 0, expected a positive value"});
}

TEST_F(CheckpointBadInput, GroupSizeNotDividing) {
  auto bytes = valid(CheckpointFormat::V2Q8);
  put_i32(bytes, kGroup, 7);
  expect_error(bad(bytes), {"group_size 7 does not divide the 3200 values of token_embedding"});
}

TEST_F(CheckpointBadInput, BadSharedFlag) {
  auto bytes = valid(CheckpointFormat::V1F32);
  bytes[kShared] = 2;
  expect_error(bad(bytes), {"shared_classifier byte is 2, expected 0 or 1"});
}

TEST_F(CheckpointBadInput, WriteErrorsNameThePath) {
  const std::string path = dir_.file("no/such/dir/model.bin");
  try {
    write_checkpoint(path, small_config(true), CheckpointFormat::V1F32, Recorder().filler());
    ADD_FAILURE() << "writing succeeded";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), StartsWith(path));
    EXPECT_THAT(e.what(), HasSubstr("cannot open for writing"));
  }
  ModelConfig c = small_config(true);
  c.n_kv_heads = 3;
  const std::string p2 = dir_.file("bad_config.bin");
  try {
    write_checkpoint(p2, c, CheckpointFormat::V2Q8, Recorder().filler());
    ADD_FAILURE() << "writing succeeded";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), StartsWith(p2));
    EXPECT_THAT(e.what(), HasSubstr("not divisible by n_kv_heads 3"));
  }
  EXPECT_FALSE(std::filesystem::exists(p2));
  try {
    write_checkpoint(p2, small_config(true), CheckpointFormat::V2Q8, Recorder().filler(), 48);
    ADD_FAILURE() << "writing succeeded";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("group_size 48 does not divide"));
  }
  EXPECT_FALSE(std::filesystem::exists(p2));
}

TEST_F(CheckpointBadInput, FillerExceptionRemovesPartialFile) {
  const std::string path = dir_.file("partial.bin");
  EXPECT_THROW(write_checkpoint(path, small_config(true), CheckpointFormat::V1F32,
                                [](const std::string& name, float*, std::size_t) {
                                  if (name == "layers.1.wq") throw Error("boom");
                                }),
               Error);
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// The presets carry their published model's classifier (the benchmark's floors count a separate one's
// bytes): llama2.c's stories models and MobileLLM share the token embedding, TinyLlama and Llama 2 do not.
// Every preset's heads divide into its KV heads. An unknown name is an error that lists the known ones.
TEST(ModelPreset, ClassifierIsThePublishedModels) {
  ASSERT_GE(model_preset_names().size(), 11u);
  for (const std::string& name : model_preset_names()) {
    const bool shared = name.rfind("stories", 0) == 0 || name.rfind("mobilellm", 0) == 0;
    const ModelConfig c = model_preset(name);
    EXPECT_EQ(c.shared_classifier, shared) << name;
    EXPECT_EQ(c.n_heads % c.n_kv_heads, 0) << name;
  }
  try {
    model_preset("llama3-8b");
    ADD_FAILURE() << "an unknown preset was accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::AllOf(::testing::HasSubstr("llama3-8b"), ::testing::HasSubstr("tinyllama")));
  }
}

TEST(CheckpointLoadMode, MemoryHoldsTheSameBytesAsTheMapping) {
  for (const char* name : {"stories260K.bin", "stories260K_q80.bin"}) {
    LLM_REQUIRE_MODEL(path, name);
    auto mapped = Checkpoint::open(path, LoadMode::Mmap);
    auto loaded = Checkpoint::open(path, LoadMode::Memory);
    const ModelWeights& a = mapped->weights();
    const ModelWeights& b = loaded->weights();
    ASSERT_EQ(a.layers.size(), b.layers.size());
    std::vector<float> ra(a.classifier.cols), rb(b.classifier.cols);
    for (int r = 0; r < a.classifier.rows; ++r) {
      a.classifier.dequantize_row(r, ra.data());
      b.classifier.dequantize_row(r, rb.data());
      ASSERT_EQ(ra, rb) << name << " classifier row " << r;
    }
    for (size_t l = 0; l < a.layers.size(); ++l) {
      const Matrix& wa = a.layers[l].w2;
      const Matrix& wb = b.layers[l].w2;
      std::vector<float> xa(wa.cols), xb(wb.cols);
      for (int r = 0; r < wa.rows; ++r) {
        wa.dequantize_row(r, xa.data());
        wb.dequantize_row(r, xb.data());
        ASSERT_EQ(xa, xb) << name << " layer " << l << " w2 row " << r;
      }
    }
  }
}

}  // namespace
}  // namespace llm
