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

#include "checkpoint.h"
#include "engine.h"
#include "error.h"
#include "half.h"
#include "language_model.h"
#include "test_support.h"

namespace llm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::HasSubstr;

struct NamedTensor {
  std::string name;
  std::vector<uint64_t> shape;
  std::vector<float> values;
};

// Writes `tensors` as one safetensors file in `dtype` ("F32" or "BF16").
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors, const std::string& dtype) {
  json header = json::object();
  std::string data;
  for (const auto& t : tensors) {
    const size_t begin = data.size();
    for (float v : t.values) {
      if (dtype == "F32") {
        data.append(reinterpret_cast<const char*>(&v), 4);
      } else {
        const uint16_t b = float_to_bf16(v);
        data.append(reinterpret_cast<const char*>(&b), 2);
      }
    }
    header[t.name] = {{"dtype", dtype}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // as HF pads it: data starts 8-byte aligned
  const uint64_t n = h.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << h << data;
}

struct ExportOptions {
  std::string dtype = "F32";
  bool sharded = false;
  bool untied = false;
};

// stories260K.bin as a Hugging Face Llama directory under `dir`.
std::string export_hf(const test::TempDir& dir, const std::string& name, const Checkpoint& ck, ExportOptions o) {
  const ModelConfig& c = ck.config();
  const ModelWeights& w = ck.weights();
  const fs::path out = dir.path() / name;
  fs::create_directories(out);
  auto rows_of = [](const Matrix& m) {
    std::vector<float> v(static_cast<size_t>(m.rows) * m.cols);
    for (int r = 0; r < m.rows; ++r) m.dequantize_row(r, v.data() + static_cast<size_t>(r) * m.cols);
    return v;
  };
  // HF keeps RoPE pairs as halves: its row i pairs with row i + d/2; ours (llama2.c) are rows 2i, 2i+1.
  auto to_hf_rope = [&](const Matrix& m) {
    std::vector<float> ours = rows_of(m), hf(ours.size());
    const int d = c.head_dim(), cols = m.cols;
    for (int r = 0; r < m.rows; ++r) {
      const int h = r / d, j = r % d, hf_row = h * d + (j % 2 == 0 ? j / 2 : j / 2 + d / 2);
      std::memcpy(&hf[static_cast<size_t>(hf_row) * cols], &ours[static_cast<size_t>(r) * cols], sizeof(float) * cols);
    }
    return hf;
  };
  auto shape = [](const Matrix& m) { return std::vector<uint64_t>{uint64_t(m.rows), uint64_t(m.cols)}; };
  auto vec = [&](const float* p) { return std::vector<float>(p, p + c.dim); };
  std::vector<NamedTensor> t;
  t.push_back({"model.embed_tokens.weight", shape(w.token_embedding), rows_of(w.token_embedding)});
  t.push_back({"model.norm.weight", {uint64_t(c.dim)}, vec(w.rms_final)});
  if (o.untied) t.push_back({"lm_head.weight", shape(w.classifier), rows_of(w.classifier)});
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    const std::string b = "model.layers." + std::to_string(l) + ".";
    t.push_back({b + "input_layernorm.weight", {uint64_t(c.dim)}, vec(L.rms_att)});
    t.push_back({b + "post_attention_layernorm.weight", {uint64_t(c.dim)}, vec(L.rms_ffn)});
    t.push_back({b + "self_attn.q_proj.weight", shape(L.wq), to_hf_rope(L.wq)});
    t.push_back({b + "self_attn.k_proj.weight", shape(L.wk), to_hf_rope(L.wk)});
    t.push_back({b + "self_attn.v_proj.weight", shape(L.wv), rows_of(L.wv)});
    t.push_back({b + "self_attn.o_proj.weight", shape(L.wo), rows_of(L.wo)});
    t.push_back({b + "mlp.gate_proj.weight", shape(L.w1), rows_of(L.w1)});
    t.push_back({b + "mlp.down_proj.weight", shape(L.w2), rows_of(L.w2)});
    t.push_back({b + "mlp.up_proj.weight", shape(L.w3), rows_of(L.w3)});
  }
  if (o.sharded) {
    json map = json::object();
    const size_t half = t.size() / 2;
    std::vector<NamedTensor> a(t.begin(), t.begin() + half), b(t.begin() + half, t.end());
    write_safetensors((out / "model-00001-of-00002.safetensors").string(), a, o.dtype);
    write_safetensors((out / "model-00002-of-00002.safetensors").string(), b, o.dtype);
    for (const auto& x : a) map[x.name] = "model-00001-of-00002.safetensors";
    for (const auto& x : b) map[x.name] = "model-00002-of-00002.safetensors";
    std::ofstream(out / "model.safetensors.index.json") << json{{"metadata", json::object()}, {"weight_map", map}};
  } else {
    write_safetensors((out / "model.safetensors").string(), t, o.dtype);
  }
  json cfg = {{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", c.dim},
              {"intermediate_size", c.hidden_dim},
              {"num_hidden_layers", c.n_layers},
              {"num_attention_heads", c.n_heads},
              {"num_key_value_heads", c.n_kv_heads},
              {"vocab_size", c.vocab_size},
              {"max_position_embeddings", c.max_seq_len},
              {"rms_norm_eps", c.rms_norm_eps},
              {"rope_theta", c.rope_theta},
              {"rope_scaling", nullptr},
              {"tie_word_embeddings", !o.untied},
              {"torch_dtype", o.dtype == "F32" ? "float32" : "bfloat16"}};
  std::ofstream(out / "config.json") << cfg.dump(2);
  fs::copy_file(test::model_path("tok512.model"), out / "tokenizer.model");
  return out.string();
}

RunConfig cpu_config(const std::string& model, const std::string& tokenizer) {
  RunConfig c;
  c.model = model;
  c.tokenizer = tokenizer;
  c.backend_order = {"mha_cpu"};
  c.plugin_dirs = {LLM_PLUGIN_DIR};
  c.threads = 2;
  return c;
}

GenerationOptions greedy(int n) {
  GenerationOptions o;
  o.max_tokens = n;
  o.stop_at_eos = false;
  return o;
}

TEST(HfModel, Stories260KInHfLayoutTellsTheSameStory) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  LLM_REQUIRE_MODEL(spm, "tok512.model");
  const auto ck = Checkpoint::open(model);
  test::TempDir dir;
  const auto ref = Engine(cpu_config(model, spm)).generate("Once upon a time", greedy(200));
  for (auto [name, opts] : {std::pair{"single", ExportOptions{}},
                            {"sharded", ExportOptions{"F32", true, false}},
                            {"untied", ExportOptions{"F32", false, true}}}) {
    const std::string hf = export_hf(dir, name, *ck, opts);
    Engine e(cpu_config(hf, ""));  // the directory's tokenizer.model
    EXPECT_EQ(e.model().config().shared_classifier, !opts.untied) << name;
    const auto r = e.generate("Once upon a time", greedy(200));
    EXPECT_EQ(r.tokens, ref.tokens) << name;
  }
  // bf16 weights: the story's opening survives the rounding
  Engine bf16(cpu_config(export_hf(dir, "bf16", *ck, {"BF16", false, false}), ""));
  const auto r = bf16.generate("Once upon a time", greedy(30));
  EXPECT_THAT("Once upon a time" + r.text,
              testing::StartsWith("Once upon a time, there was a little girl named Lily."));
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

std::string error_of(const std::string& path) {
  try {
    Checkpoint::open(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(HfModel, BadDirectoriesGetErrorsNamingTheFileAndThePart) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  LLM_REQUIRE_MODEL(spm, "tok512.model");
  const auto ck = Checkpoint::open(model);
  test::TempDir dir;
  auto edit_config = [&](const std::string& name, const std::function<void(json&)>& f) {
    const std::string hf = export_hf(dir, name, *ck, {});
    json cfg = json::parse(std::ifstream(fs::path(hf) / "config.json"));
    f(cfg);
    std::ofstream(fs::path(hf) / "config.json") << cfg.dump();
    return hf;
  };
  EXPECT_THAT(error_of(edit_config("mistral", [](json& c) { c["architectures"] = {"MistralForCausalLM"}; })),
              HasSubstr("architectures [\"MistralForCausalLM\"] is not supported"));
  EXPECT_THAT(error_of(edit_config("yarn",
                                   [](json& c) {
                                     c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}};
                                   })),
              HasSubstr("rope_scaling type 'yarn' is not supported"));
  EXPECT_THAT(error_of(edit_config("nolayers", [](json& c) { c.erase("num_hidden_layers"); })),
              HasSubstr("'num_hidden_layers' is missing"));
  EXPECT_THAT(error_of(edit_config("strlayers", [](json& c) { c["num_hidden_layers"] = "five"; })),
              HasSubstr("'num_hidden_layers' is \"five\", expected an integer"));
  EXPECT_THAT(error_of(edit_config("wide", [](json& c) { c["intermediate_size"] = 180; })),
              HasSubstr("tensor 'model.layers.0.mlp.gate_proj.weight' has shape [172, 64], expected [180, 64]"));

  // a tensor missing from the file, and a file cut short
  const std::string hf = export_hf(dir, "cut", *ck, {});
  const std::string st = (fs::path(hf) / "model.safetensors").string();
  const auto size = fs::file_size(st);
  fs::resize_file(st, size - 1000);
  EXPECT_THAT(error_of(hf), HasSubstr("model.safetensors: safetensors: tensor"));
  EXPECT_THAT(error_of(hf), HasSubstr("past the"));
  const std::string hf2 = export_hf(dir, "partial", *ck, {ExportOptions{"F32", true, false}});
  json index = json::parse(std::ifstream(fs::path(hf2) / "model.safetensors.index.json"));
  index["weight_map"].erase("model.layers.4.mlp.up_proj.weight");
  std::ofstream(fs::path(hf2) / "model.safetensors.index.json") << index.dump();
  EXPECT_THAT(error_of(hf2),
              HasSubstr("tensor 'model.layers.4.mlp.up_proj.weight' is missing from model.safetensors.index.json"));

  // the directory's tokenizer.json is used when there is no tokenizer.model: a malformed one is named
  const std::string bpe = export_hf(dir, "bpe", *ck, {});
  fs::remove(fs::path(bpe) / "tokenizer.model");
  std::ofstream(fs::path(bpe) / "tokenizer.json") << "{}";
  try {
    Engine e(cpu_config(bpe, ""));
    ADD_FAILURE() << "a directory with an empty tokenizer.json loaded";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("tokenizer.json: not a Hugging Face tokenizer.json (no 'model' object)"));
  }
}

}  // namespace
}  // namespace llm
