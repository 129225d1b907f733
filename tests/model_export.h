// Test support for whole models: stories260K written out in the other formats the runtime reads (GGUF, a
// Hugging Face directory), so that the same model can be checked through every loader on the CPU and the
// GPU, and the comparisons those checks make (logits of two engines along one greedy path).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "checkpoint.h"
#include "engine.h"
#include "generator.h"
#include "gguf_writer.h"
#include "half.h"
#include "random_checkpoint.h"
#include "run_config.h"
#include "sampler.h"
#include "test_support.h"
#include "tokenizer_internal.h"

namespace llm::test {

// A small random-weight Llama (llama2.c version 1, fp32) for shapes stories260K does not have: GQA with
// 8 query heads over 4 kv heads of 64 (the GPU kernels' full-width paths), 4 layers, `hidden` MLP rows, the
// 512-token vocabulary of tok512, a context of 256. Written to `dir` as `name`; returns its path.
inline std::string random_gqa_model(TempDir& dir, const std::string& name, int hidden, uint64_t seed) {
  ModelConfig mc;
  mc.dim = 512, mc.hidden_dim = hidden, mc.n_layers = 4, mc.n_heads = 8, mc.n_kv_heads = 4;
  mc.vocab_size = 512, mc.max_seq_len = 256;
  const std::string path = dir.file(name);
  write_checkpoint(path, mc, CheckpointFormat::V1F32, random_weights(mc, seed));
  return path;
}

// mha_cpu on 2 threads; `tokenizer` "" takes the model file's own (GGUF, Hugging Face directory).
inline RunConfig cpu_config(const std::string& model, const std::string& tokenizer) {
  RunConfig c;
  c.model = model;
  c.tokenizer = tokenizer;
  c.backend_order = {"mha_cpu"};
  c.plugin_dirs = {LLM_PLUGIN_DIR};
  c.threads = 2;
  return c;
}

// Two engines along the reference engine's greedy path (teacher-forced, so one near tie cannot send the
// texts apart for good): the worst relative L2 logit error, and the steps whose argmax differs.
// A differing argmax is "explained" when the reference's top two logits are closer than the largest
// logit difference between the engines at that step (a tie within the measured error).
struct PathComparison {
  double max_rel_err = 0;
  int argmax_differs = 0, unexplained = 0;

  // Folds in one step's logits of one sequence. Returns the reference's argmax, or -1 (max_rel_err then
  // infinite) when a logit of `test` is not finite.
  int add(const float* ref, const float* test, int vocab) {
    double e = 0, n = 0, worst_abs = 0;
    for (int i = 0; i < vocab; ++i) {
      if (!std::isfinite(test[i])) {
        max_rel_err = INFINITY;
        return -1;
      }
      e += (test[i] - ref[i]) * double(test[i] - ref[i]);
      n += double(ref[i]) * ref[i];
      worst_abs = std::max(worst_abs, std::fabs(double(test[i]) - ref[i]));
    }
    max_rel_err = std::max(max_rel_err, std::sqrt(e / n));
    const int a = ::llm::argmax(ref, vocab), b = ::llm::argmax(test, vocab);
    if (a != b) {
      ++argmax_differs;
      if (ref[a] - ref[b] > 2 * worst_abs) ++unexplained;
    }
    return a;
  }
};

inline PathComparison compare_along_path(Engine& test, Engine& ref, int steps) {
  std::vector<int> tokens = ref.tokenizer().encode("Once upon a time", true);
  const int vocab = ref.model().config().vocab_size;
  PathComparison c;
  for (int s = 0; s < steps; ++s) {
    const int start = s == 0 ? 0 : static_cast<int>(tokens.size()) - 1;
    std::vector<int> feed(tokens.begin() + start, tokens.end());
    const float* lr = ref.model().forward({SequenceChunk{0, start, feed}});
    std::vector<float> r(lr, lr + vocab);
    const float* lt = test.model().forward({SequenceChunk{0, start, feed}});
    const int a = c.add(r.data(), lt, vocab);
    if (a < 0) return c;
    tokens.push_back(a);
  }
  return c;
}

// The worst relative L2 logit error of compare_along_path (infinity when `test` gives a non-finite logit).
inline double max_logit_error(Engine& test, Engine& ref, int steps) {
  return compare_along_path(test, ref, steps).max_rel_err;
}

// The message Checkpoint::open gives for `path`, or "no error".
inline std::string checkpoint_error(const std::string& path) {
  try {
    Checkpoint::open(path);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

// Greedy decoding of exactly n tokens (EOS does not stop it).
inline GenerationOptions greedy(int n) {
  GenerationOptions o;
  o.max_tokens = n;
  o.stop_at_eos = false;
  return o;
}

inline std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// stories260K.bin with the tok512.bin vocabulary as a GGUF of `type`, written into `dir`.
inline std::string stories_gguf(const TempDir& dir, gguf::TensorType type, const std::string& model) {
  const auto ckpt = Checkpoint::open(model);
  const std::string tok = model_path("tok512.bin");
  const auto voc = ::llm::detail::parse_llama2c_vocabulary(read_all(tok), tok);
  const std::string out = dir.file("stories260K_" + std::to_string(static_cast<int>(type)) + ".gguf");
  gguf::llama_gguf(*ckpt, voc.pieces, voc.scores, type).write(out);
  return out;
}

struct NamedTensor {
  std::string name;
  std::vector<uint64_t> shape;
  std::vector<float> values;
};

// Writes `tensors` as one safetensors file in `dtype` ("F32" or "BF16").
inline void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::string& dtype) {
  nlohmann::json header = nlohmann::json::object();
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
inline std::string export_hf(const TempDir& dir, const std::string& name, const Checkpoint& ck, ExportOptions o) {
  const ModelConfig& c = ck.config();
  const ModelWeights& w = ck.weights();
  const std::filesystem::path out = dir.path() / name;
  std::filesystem::create_directories(out);
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
    nlohmann::json map = nlohmann::json::object();
    const size_t half = t.size() / 2;
    std::vector<NamedTensor> a(t.begin(), t.begin() + half), b(t.begin() + half, t.end());
    write_safetensors((out / "model-00001-of-00002.safetensors").string(), a, o.dtype);
    write_safetensors((out / "model-00002-of-00002.safetensors").string(), b, o.dtype);
    for (const auto& x : a) map[x.name] = "model-00001-of-00002.safetensors";
    for (const auto& x : b) map[x.name] = "model-00002-of-00002.safetensors";
    std::ofstream(out / "model.safetensors.index.json")
        << nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", map}};
  } else {
    write_safetensors((out / "model.safetensors").string(), t, o.dtype);
  }
  nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
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
  std::filesystem::copy_file(model_path("tok512.model"), out / "tokenizer.model");
  return out.string();
}

}  // namespace llm::test
