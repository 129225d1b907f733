// Hugging Face Llama directories: config.json of LlamaForCausalLM, weights in model.safetensors or shards
// listed by model.safetensors.index.json, in F32, F16 or BF16 (widened to fp32 at load; F32 used in place
// when aligned). HF stores q_proj and k_proj rows with RoPE's pairs split into halves (row i pairs with row
// i + head_dim/2); the runtime rotates adjacent pairs (llama2.c, GGUF), so those rows are reordered here.
// RoPE scaling of type llama3 (Llama 3.1/3.2) is supported, as `rope_scaling` (transformers 4) or
// `rope_parameters` (transformers 5); other types are refused by name.
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "checkpoint.h"
#include "error.h"
#include "half.h"
#include "json_integer.h"
#include "log.h"
#include "safetensors.h"

namespace fs = std::filesystem;

namespace llm {
namespace {

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path.string(), e.what());
  }
}

// A config.json value of the expected JSON kind, or the fallback when absent (or null).
template <typename T>
T config_value(const nlohmann::json& c, const char* key, const std::string& where, const T* fallback = nullptr) {
  if (!c.contains(key) || c[key].is_null()) {
    if (fallback) return *fallback;
    fail("{}: '{}' is missing (a LlamaForCausalLM config has it)", where, key);
  }
  const nlohmann::json& v = c[key];
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if (!json_integer_within(v, std::numeric_limits<T>::min(), std::numeric_limits<T>::max()))
      fail("{}: '{}' is {}, expected an integer from {} to {}", where, key, v.dump(), std::numeric_limits<T>::min(),
           std::numeric_limits<T>::max());
    return static_cast<T>(v.get<int64_t>());
  } else {
    try {
      return v.get<T>();
    } catch (const nlohmann::json::exception&) {
      fail("{}: '{}' is {}, expected {}", where, key, v.dump(), std::is_same_v<T, bool> ? "true or false" : "a number");
    }
  }
}

}  // namespace

void Checkpoint::load_hf() {
  try {
    load_hf_checked();
  } catch (const nlohmann::json::exception& e) {  // a JSON field of the wrong kind
    fail("{}: malformed model directory JSON: {}", path_, e.what());
  }
}

void Checkpoint::load_hf_checked() {
  const fs::path dir(path_);
  const std::string cfg_path = (dir / "config.json").string();
  if (!fs::exists(dir / "config.json"))
    fail("{}: a model directory needs config.json (Hugging Face layout); none found", path_);
  const nlohmann::json cfg = read_json(dir / "config.json");
  const auto archs = cfg.value("architectures", nlohmann::json::array());
  if (!archs.is_array() || std::find(archs.begin(), archs.end(), "LlamaForCausalLM") == archs.end())
    fail("{}: architectures {} is not supported; this runtime runs LlamaForCausalLM", cfg_path, archs.dump());

  ModelConfig& c = config_;
  c.dim = config_value<int>(cfg, "hidden_size", cfg_path);
  c.hidden_dim = config_value<int>(cfg, "intermediate_size", cfg_path);
  c.n_layers = config_value<int>(cfg, "num_hidden_layers", cfg_path);
  c.n_heads = config_value<int>(cfg, "num_attention_heads", cfg_path);
  c.n_kv_heads = config_value<int>(cfg, "num_key_value_heads", cfg_path, &c.n_heads);
  c.vocab_size = config_value<int>(cfg, "vocab_size", cfg_path);
  c.max_seq_len = config_value<int>(cfg, "max_position_embeddings", cfg_path);
  const double eps = 1e-6, theta = 10000.0;
  c.rms_norm_eps = static_cast<float>(config_value<double>(cfg, "rms_norm_eps", cfg_path, &eps));
  c.rope_theta = static_cast<float>(config_value<double>(cfg, "rope_theta", cfg_path, &theta));
  const bool untied = false;
  c.shared_classifier = config_value<bool>(cfg, "tie_word_embeddings", cfg_path, &untied);
  validate_model_config(cfg_path, c);
  if (cfg.contains("head_dim") && !cfg["head_dim"].is_null() && cfg["head_dim"] != c.head_dim())
    fail("{}: head_dim {} differs from hidden_size / num_attention_heads = {}; not supported", cfg_path,
         cfg["head_dim"].dump(), c.head_dim());
  if (cfg.contains("mlp_bias") && cfg["mlp_bias"] == true) fail("{}: mlp_bias true is not supported", cfg_path);
  if (cfg.contains("attention_bias") && cfg["attention_bias"] == true)
    fail("{}: attention_bias true is not supported", cfg_path);
  // RoPE: transformers 4 writes rope_theta and rope_scaling at the top; transformers 5 writes both inside
  // rope_parameters, whose rope_type "default" means no scaling.
  const char* rope_key =
      cfg.contains("rope_parameters") && !cfg["rope_parameters"].is_null() ? "rope_parameters" : "rope_scaling";
  const nlohmann::json rs = cfg.value(rope_key, nlohmann::json());
  if (!rs.is_null() && rs.contains("rope_theta"))
    c.rope_theta = static_cast<float>(config_value<double>(rs, "rope_theta", cfg_path + " " + rope_key));
  const std::string rope_type = rs.is_null() ? "default" : rs.value("rope_type", rs.value("type", std::string("?")));
  if (rope_type != "default") {
    if (rope_type != "llama3")
      fail("{}: {} type '{}' is not supported (supported: llama3, or none)", cfg_path, rope_key, rope_type);
    const std::string where = cfg_path + " " + rope_key;
    c.rope_scaling.factor = static_cast<float>(config_value<double>(rs, "factor", where));
    c.rope_scaling.low_freq_factor = static_cast<float>(config_value<double>(rs, "low_freq_factor", where));
    c.rope_scaling.high_freq_factor = static_cast<float>(config_value<double>(rs, "high_freq_factor", where));
    c.rope_scaling.original_max_position = config_value<int>(rs, "original_max_position_embeddings", where);
    if (!(c.rope_scaling.factor > 0 && c.rope_scaling.high_freq_factor > c.rope_scaling.low_freq_factor &&
          c.rope_scaling.original_max_position > 0))
      fail(
          "{}: llama3 rope_scaling needs factor > 0, high_freq_factor > low_freq_factor and "
          "original_max_position_embeddings > 0; got {}",
          cfg_path, rs.dump());
  }

  // End-of-text ids: generation_config.json first (what generate() uses), else config.json; one or a list.
  for (const char* file : {"generation_config.json", "config.json"}) {
    if (!fs::exists(dir / file)) continue;
    const nlohmann::json g = std::string(file) == "config.json" ? cfg : read_json(dir / file);
    const nlohmann::json eos = g.value("eos_token_id", nlohmann::json());
    if (eos.is_null()) continue;
    for (const auto& id : eos.is_array() ? eos : nlohmann::json::array({eos})) {
      if (!json_integer_within(id, 0, c.vocab_size - 1))
        fail("{}: eos_token_id {} is not a token id below vocab_size {}", (dir / file).string(), eos.dump(),
             c.vocab_size);
      eos_ids_.push_back(id.get<int>());
    }
    break;
  }

  // Which file holds which tensor: one model.safetensors, or the shards the index lists.
  std::map<std::string, std::string> file_of;  // tensor -> file name
  if (fs::exists(dir / "model.safetensors.index.json")) {
    const nlohmann::json index = read_json(dir / "model.safetensors.index.json");
    if (!index.contains("weight_map") || !index["weight_map"].is_object())
      fail("{}: no 'weight_map' object", (dir / "model.safetensors.index.json").string());
    for (const auto& [name, file] : index["weight_map"].items()) file_of[name] = file.get<std::string>();
  } else if (!fs::exists(dir / "model.safetensors")) {
    fail("{}: neither model.safetensors nor model.safetensors.index.json is there", path_);
  }
  std::map<std::string, std::map<std::string, safetensors::Tensor>> parsed;  // file -> its tensors
  auto tensors_of = [&](const std::string& file) -> const std::map<std::string, safetensors::Tensor>& {
    auto it = parsed.find(file);
    if (it != parsed.end()) return it->second;
    if (file.find('/') != std::string::npos || file.find("..") != std::string::npos)
      fail("{}: the index names '{}', which is not a file name inside the directory", path_, file);
    shards_.emplace_back((dir / file).string(), LoadMode::Mmap);
    const MappedFile& m = shards_.back();
    return parsed.emplace(file, safetensors::parse(m.data(), m.size(), (dir / file).string())).first->second;
  };
  auto find = [&](const std::string& name, std::string& file) -> const safetensors::Tensor& {
    file = file_of.empty() ? "model.safetensors" : file_of.count(name) ? file_of[name] : "";
    if (file.empty()) fail("{}: tensor '{}' is missing from model.safetensors.index.json", path_, name);
    const auto& ts = tensors_of(file);
    auto it = ts.find(name);
    if (it == ts.end()) fail("{}: tensor '{}' is missing", (dir / file).string(), name);
    return it->second;
  };
  // fp32 rows of tensor `name` [rows, cols]; `rope_rows`: reorder q/k rows from HF's halves to pairs.
  auto load = [&](const std::string& name, int64_t rows, int64_t cols, bool rope_rows) -> const float* {
    std::string file;
    const safetensors::Tensor& t = find(name, file);
    const std::vector<uint64_t> want =
        rows == 1 ? std::vector<uint64_t>{static_cast<uint64_t>(cols)}
                  : std::vector<uint64_t>{static_cast<uint64_t>(rows), static_cast<uint64_t>(cols)};
    if (t.shape != want)
      fail("{}: tensor '{}' has shape [{}], expected [{}]", (dir / file).string(), name, fmt::join(t.shape, ", "),
           fmt::join(want, ", "));
    if (t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16")
      fail("{}: tensor '{}' has dtype {}; supported: F32, F16, BF16", (dir / file).string(), name, t.dtype);
    const uint64_t n = t.elements();
    if (t.dtype == "F32" && !rope_rows && reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0)
      return reinterpret_cast<const float*>(t.data);
    owned_.emplace_back(n);
    float* out = owned_.back().data();
    const StoredFloat stored = t.dtype == "F32"   ? StoredFloat::F32
                               : t.dtype == "F16" ? StoredFloat::F16
                                                  : StoredFloat::BF16;
    const int head = c.head_dim(), half = head / 2;
    for (int64_t r = 0; r < rows; ++r) {
      // destination row r takes source row `src`: within a head, pair (2i, 2i+1) <- (i, i + half)
      int64_t src = r;
      if (rope_rows) {
        const int64_t h = r / head, j = r % head;
        src = h * head + (j % 2 == 0 ? j / 2 : j / 2 + half);
      }
      widen_to_f32(stored, t.data + static_cast<uint64_t>(src * cols) * (stored == StoredFloat::F32 ? 4 : 2),
                   static_cast<std::size_t>(cols), out + r * cols);
    }
    return out;
  };
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols, bool rope_rows = false) {
    Matrix m;
    m.rows = static_cast<int>(rows), m.cols = static_cast<int>(cols);
    m.f32 = load(name, rows, cols, rope_rows);
    return m;
  };
  ModelWeights& w = weights_;
  const int64_t dim = c.dim, kv = c.kv_dim(), hidden = c.hidden_dim;
  w.token_embedding = matrix("model.embed_tokens.weight", c.vocab_size, dim);
  w.classifier = c.shared_classifier ? w.token_embedding : matrix("lm_head.weight", c.vocab_size, dim);
  w.rms_final = load("model.norm.weight", 1, dim, false);
  w.layers.assign(static_cast<std::size_t>(c.n_layers), LayerWeights{});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string b = "model.layers." + std::to_string(l) + ".";
    LayerWeights& L = w.layers[static_cast<std::size_t>(l)];
    L.rms_att = load(b + "input_layernorm.weight", 1, dim, false);
    L.rms_ffn = load(b + "post_attention_layernorm.weight", 1, dim, false);
    L.wq = matrix(b + "self_attn.q_proj.weight", dim, dim, true);
    L.wk = matrix(b + "self_attn.k_proj.weight", kv, dim, true);
    L.wv = matrix(b + "self_attn.v_proj.weight", kv, dim);
    L.wo = matrix(b + "self_attn.o_proj.weight", dim, dim);
    L.w1 = matrix(b + "mlp.gate_proj.weight", hidden, dim);
    L.w2 = matrix(b + "mlp.down_proj.weight", dim, hidden);
    L.w3 = matrix(b + "mlp.up_proj.weight", hidden, dim);
  }
  log().info("{}: Hugging Face Llama, {} safetensors file(s){}", path_, shards_.size(),
             c.rope_scaling.factor > 0 ? fmt::format(", llama3 RoPE scaling x{}", c.rope_scaling.factor) : "");
}

}  // namespace llm
