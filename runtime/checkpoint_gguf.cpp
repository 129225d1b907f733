// GGUF files of the `llama` architecture, as llama.cpp's converters write them: the shape from the
// `llama.*` metadata, the weights from `token_embd`, `blk.N.*`, `output_norm` and `output` (absent: the
// classifier is the embedding). Q and K rows are in the adjacent-pair RoPE layout, as in llama2.c files.
// F32 tensors are used in place (memory-mapped); F16 and BF16 are widened to fp32 at load; Q8_0 blocks
// (an fp16 scale and 32 int8 values) are regrouped into the runtime's Q8_0 (int8 values, fp32 scales).
// Any other tensor type, a missing tensor or key, or a shape that does not fit is an error naming it.
#include <fmt/ranges.h>

#include <cmath>
#include <cstring>

#include "checkpoint.h"
#include "error.h"
#include "gguf.h"
#include "half.h"
#include "log.h"

namespace llm {
namespace {

class Metadata {
 public:
  Metadata(const gguf::File& f, const std::string& path) : f_(f), path_(path) {}

  int64_t integer(const std::string& key) const {
    const gguf::Value& v = need(key);
    if (!v.is_integer())
      fail("{}: GGUF metadata '{}' is a {}, expected an integer", path_, key, gguf::value_type_name(v.type));
    return v.integer();
  }
  int64_t integer(const std::string& key, int64_t fallback) const { return f_.find(key) ? integer(key) : fallback; }
  double number(const std::string& key, double fallback) const {
    const gguf::Value* v = f_.find(key);
    if (!v) return fallback;
    if (v->is_float()) return v->f;
    if (v->is_integer()) return static_cast<double>(integer(key));
    fail("{}: GGUF metadata '{}' is a {}, expected a number", path_, key, gguf::value_type_name(v->type));
  }
  const std::string& string(const std::string& key) const {
    const gguf::Value& v = need(key);
    if (v.type != gguf::ValueType::String)
      fail("{}: GGUF metadata '{}' is a {}, expected a string", path_, key, gguf::value_type_name(v.type));
    return v.s;
  }

 private:
  const gguf::Value& need(const std::string& key) const {
    const gguf::Value* v = f_.find(key);
    if (!v) fail("{}: GGUF metadata '{}' is missing (a llama model needs it)", path_, key);
    return *v;
  }
  const gguf::File& f_;
  const std::string& path_;
};

}  // namespace

void Checkpoint::load_gguf() {
  const std::string& path = path_;
  const uint8_t* data = file_.data();
  const gguf::File f = gguf::parse(data, file_.size(), path);
  const Metadata meta(f, path);

  const std::string& arch = meta.string("general.architecture");
  if (arch != "llama")
    fail("{}: GGUF architecture '{}' is not supported; this runtime runs 'llama' (Llama-family) models", path, arch);
  ModelConfig& c = config_;
  c.dim = static_cast<int>(meta.integer("llama.embedding_length"));
  c.hidden_dim = static_cast<int>(meta.integer("llama.feed_forward_length"));
  c.n_layers = static_cast<int>(meta.integer("llama.block_count"));
  c.n_heads = static_cast<int>(meta.integer("llama.attention.head_count"));
  c.n_kv_heads = static_cast<int>(meta.integer("llama.attention.head_count_kv", c.n_heads));
  c.max_seq_len = static_cast<int>(meta.integer("llama.context_length"));
  c.rms_norm_eps = static_cast<float>(meta.number("llama.attention.layer_norm_rms_epsilon", 1e-5));
  c.rope_theta = static_cast<float>(meta.number("llama.rope.freq_base", 10000.0));
  const gguf::TensorInfo* embd = f.tensor("token_embd.weight");
  if (!embd) fail("{}: GGUF tensor 'token_embd.weight' is missing", path);
  c.vocab_size = embd->dims.size() == 2 ? static_cast<int>(embd->dims[1]) : 0;
  c.shared_classifier = f.tensor("output.weight") == nullptr;
  validate_model_config(path, c);
  if (c.n_heads > 0 && meta.integer("llama.rope.dimension_count", c.head_dim()) != c.head_dim())
    fail(
        "{}: GGUF llama.rope.dimension_count is {} but the head size is {}; partial rotary embeddings are not "
        "supported",
        path, meta.integer("llama.rope.dimension_count"), c.head_dim());
  if (const gguf::Value* scaling = f.find("llama.rope.scaling.type"); scaling && scaling->s != "none")
    fail("{}: GGUF llama.rope.scaling.type '{}' is not supported (only unscaled RoPE)", path, scaling->s);

  // A tensor by name with the expected shape (cols = dims[0], rows = dims[1]; a vector has rows 1).
  auto tensor = [&](const std::string& name, int64_t rows, int64_t cols) -> const gguf::TensorInfo& {
    const gguf::TensorInfo* t = f.tensor(name);
    if (!t) fail("{}: GGUF tensor '{}' is missing", path, name);
    const bool vector = rows == 1 && t->dims.size() == 1;
    if (!vector && !(t->dims.size() == 2 && static_cast<int64_t>(t->dims[1]) == rows))
      fail("{}: GGUF tensor '{}' has shape [{}], expected [{}, {}] (cols, rows)", path, name, fmt::join(t->dims, ", "),
           cols, rows);
    if (static_cast<int64_t>(t->dims[0]) != cols)
      fail("{}: GGUF tensor '{}' has {} columns, expected {}", path, name, t->dims[0], cols);
    const auto type = static_cast<gguf::TensorType>(t->type);
    if (type != gguf::TensorType::F32 && type != gguf::TensorType::F16 && type != gguf::TensorType::BF16 &&
        type != gguf::TensorType::Q8_0)
      fail("{}: GGUF tensor '{}' has type {} ({}); supported: F32, F16, BF16, Q8_0", path, name,
           gguf::tensor_type_name(t->type), t->type);
    if (t->bytes == 0)
      fail("{}: GGUF tensor '{}' of type {} has a size that is not whole blocks", path, name,
           gguf::tensor_type_name(t->type));
    return *t;
  };
  // fp32 values of a tensor: in place for F32, else converted into memory this checkpoint owns.
  auto floats = [&](const gguf::TensorInfo& t) -> const float* {
    const uint8_t* p = data + t.offset;
    const uint64_t n = t.elements();
    if (t.type == static_cast<uint32_t>(gguf::TensorType::F32) && reinterpret_cast<uintptr_t>(p) % alignof(float) == 0)
      return reinterpret_cast<const float*>(p);
    owned_.emplace_back(n);
    float* out = owned_.back().data();
    switch (static_cast<gguf::TensorType>(t.type)) {
      case gguf::TensorType::F32: widen_to_f32(StoredFloat::F32, p, n, out); break;
      case gguf::TensorType::F16: widen_to_f32(StoredFloat::F16, p, n, out); break;
      case gguf::TensorType::BF16: widen_to_f32(StoredFloat::BF16, p, n, out); break;
      case gguf::TensorType::Q8_0:
        for (uint64_t i = 0; i < n; ++i) {
          const uint8_t* block = p + (i / gguf::kQ8Block) * gguf::kQ8BlockBytes;
          uint16_t h;
          std::memcpy(&h, block, 2);
          out[i] = half_to_float(h) * static_cast<float>(static_cast<int8_t>(block[2 + i % gguf::kQ8Block]));
        }
        break;
    }
    return out;
  };
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
    const gguf::TensorInfo& t = tensor(name, rows, cols);
    Matrix m;
    m.rows = static_cast<int>(rows), m.cols = static_cast<int>(cols);
    if (t.type != static_cast<uint32_t>(gguf::TensorType::Q8_0)) {
      m.f32 = floats(t);
      return m;
    }
    // Q8_0 blocks never straddle rows (cols is a multiple of 32 for a Q8_0 tensor): values and scales
    // are split into the runtime's layout, value i = q[i] * scales[i / 32].
    const uint64_t n = t.elements(), blocks = n / gguf::kQ8Block;
    owned_q_.emplace_back(n);
    owned_.emplace_back(blocks);
    int8_t* q = owned_q_.back().data();
    float* scales = owned_.back().data();
    const uint8_t* p = data + t.offset;
    for (uint64_t b = 0; b < blocks; ++b, p += gguf::kQ8BlockBytes) {
      uint16_t h;
      std::memcpy(&h, p, 2);
      scales[b] = half_to_float(h);
      std::memcpy(q + b * gguf::kQ8Block, p + 2, gguf::kQ8Block);
    }
    m.type = WeightType::Q8_0, m.q = q, m.scales = scales, m.group_size = gguf::kQ8Block;
    return m;
  };
  auto vector = [&](const std::string& name, int64_t n) { return floats(tensor(name, 1, n)); };

  // Llama 3.1's RoPE scaling, as llama.cpp stores it: one divisor per rotated pair.
  if (f.tensor("rope_freqs.weight")) {
    const float* factors = vector("rope_freqs.weight", c.head_dim() / 2);
    c.rope_freq_factors.assign(factors, factors + c.head_dim() / 2);
    for (float x : c.rope_freq_factors)
      if (!(x > 0.0f) || !std::isfinite(x)) fail("{}: GGUF rope_freqs.weight holds {}, not a positive factor", path, x);
  }

  ModelWeights& w = weights_;
  const int64_t dim = c.dim, kv = c.kv_dim(), hidden = c.hidden_dim;
  w.token_embedding = matrix("token_embd.weight", c.vocab_size, dim);
  w.classifier = c.shared_classifier ? w.token_embedding : matrix("output.weight", c.vocab_size, dim);
  w.rms_final = vector("output_norm.weight", dim);
  w.layers.assign(static_cast<std::size_t>(c.n_layers), LayerWeights{});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    LayerWeights& L = w.layers[static_cast<std::size_t>(l)];
    L.rms_att = vector(b + "attn_norm.weight", dim);
    L.rms_ffn = vector(b + "ffn_norm.weight", dim);
    L.wq = matrix(b + "attn_q.weight", dim, dim);
    L.wk = matrix(b + "attn_k.weight", kv, dim);
    L.wv = matrix(b + "attn_v.weight", kv, dim);
    L.wo = matrix(b + "attn_output.weight", dim, dim);
    L.w1 = matrix(b + "ffn_gate.weight", hidden, dim);
    L.w2 = matrix(b + "ffn_down.weight", dim, hidden);
    L.w3 = matrix(b + "ffn_up.weight", hidden, dim);
  }
  if (!owned_.empty())
    log().info("{}: GGUF weights converted at load into {:.1f} MiB of memory (F16/BF16 widened, Q8_0 regrouped)", path,
               [&] {
                 double bytes = 0;
                 for (const auto& v : owned_) bytes += 4.0 * v.size();
                 for (const auto& v : owned_q_) bytes += v.size();
                 return bytes / (1 << 20);
               }());
}

}  // namespace llm
