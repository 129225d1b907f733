#include "gguf_writer.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "error.h"
#include "half.h"
#include "tokenizer_internal.h"

namespace llm::gguf {
namespace {

void put(std::vector<uint8_t>& out, const void* p, std::size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  out.insert(out.end(), b, b + n);
}
template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  put(out, &v, sizeof v);
}
void put_string(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  put(out, s.data(), s.size());
}

void put_value(std::vector<uint8_t>& out, const Value& v) {
  switch (v.type) {
    case ValueType::U8: put<uint8_t>(out, static_cast<uint8_t>(v.u)); break;
    case ValueType::I8: put<int8_t>(out, static_cast<int8_t>(v.i)); break;
    case ValueType::U16: put<uint16_t>(out, static_cast<uint16_t>(v.u)); break;
    case ValueType::I16: put<int16_t>(out, static_cast<int16_t>(v.i)); break;
    case ValueType::U32: put<uint32_t>(out, static_cast<uint32_t>(v.u)); break;
    case ValueType::I32: put<int32_t>(out, static_cast<int32_t>(v.i)); break;
    case ValueType::U64: put<uint64_t>(out, v.u); break;
    case ValueType::I64: put<int64_t>(out, v.i); break;
    case ValueType::F32: put<float>(out, static_cast<float>(v.f)); break;
    case ValueType::F64: put<double>(out, v.f); break;
    case ValueType::Bool: put<uint8_t>(out, v.u ? 1 : 0); break;
    case ValueType::String: put_string(out, v.s); break;
    case ValueType::Array:
      put<uint32_t>(out, static_cast<uint32_t>(v.elem));
      put<uint64_t>(out, v.array.size());
      for (const Value& e : v.array) put_value(out, e);
      break;
  }
}

Value scalar(ValueType t) {
  Value v;
  v.type = t;
  return v;
}
Value u32(uint32_t x) {
  Value v = scalar(ValueType::U32);
  v.u = x;
  return v;
}
Value i32(int32_t x) {
  Value v = scalar(ValueType::I32);
  v.i = x;
  return v;
}
Value f32(float x) {
  Value v = scalar(ValueType::F32);
  v.f = x;
  return v;
}
Value str(std::string x) {
  Value v = scalar(ValueType::String);
  v.s = std::move(x);
  return v;
}
// An array of `elem` values, element i made by make(xs[i]).
template <typename T, typename Make>
Value array_of(ValueType elem, const std::vector<T>& xs, Make make) {
  Value v = scalar(ValueType::Array);
  v.elem = elem;
  for (const T& x : xs) v.array.push_back(make(x));
  return v;
}

}  // namespace

void Writer::set(const std::string& key, Value value) {
  erase(key);
  metadata_.emplace_back(key, std::move(value));
}
void Writer::set_u32(const std::string& key, uint32_t v) { set(key, u32(v)); }
void Writer::set_f32(const std::string& key, float v) { set(key, f32(v)); }
void Writer::set_string(const std::string& key, std::string v) { set(key, str(std::move(v))); }
void Writer::set_strings(const std::string& key, const std::vector<std::string>& xs) {
  set(key, array_of(ValueType::String, xs, str));
}
void Writer::set_f32s(const std::string& key, const std::vector<float>& xs) {
  set(key, array_of(ValueType::F32, xs, f32));
}
void Writer::set_i32s(const std::string& key, const std::vector<int32_t>& xs) {
  set(key, array_of(ValueType::I32, xs, i32));
}
void Writer::erase(const std::string& key) {
  for (auto it = metadata_.begin(); it != metadata_.end(); ++it)
    if (it->first == key) {
      metadata_.erase(it);
      return;
    }
}

std::vector<uint8_t> encode(TensorType type, const float* x, std::size_t n) {
  std::vector<uint8_t> out;
  switch (type) {
    case TensorType::F32: put(out, x, n * sizeof(float)); break;
    case TensorType::F16:
      for (std::size_t i = 0; i < n; ++i) put<uint16_t>(out, float_to_half(x[i]));
      break;
    case TensorType::BF16:
      for (std::size_t i = 0; i < n; ++i) put<uint16_t>(out, float_to_bf16(x[i]));
      break;
    case TensorType::Q8_0:
      if (n % kQ8Block) fail("Q8_0 needs a multiple of {} values, got {}", kQ8Block, n);
      for (std::size_t b = 0; b < n; b += kQ8Block) {
        float amax = 0.0f;
        for (int i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(x[b + i]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        put<uint16_t>(out, float_to_half(d));
        for (int i = 0; i < kQ8Block; ++i) put<int8_t>(out, static_cast<int8_t>(std::lround(x[b + i] * id)));
      }
      break;
  }
  return out;
}

void Writer::add_tensor(const std::string& name, std::vector<uint64_t> dims, TensorType type, const float* values) {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  add_raw_tensor(name, std::move(dims), static_cast<uint32_t>(type), encode(type, values, n));
}

void Writer::add_raw_tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type,
                            std::vector<uint8_t> bytes) {
  tensors_.push_back({name, std::move(dims), type, std::move(bytes)});
}

void Writer::remove_tensor(const std::string& name) {
  for (auto it = tensors_.begin(); it != tensors_.end(); ++it)
    if (it->name == name) {
      tensors_.erase(it);
      return;
    }
}

void Writer::write(const std::string& path) const {
  std::vector<uint8_t> head;
  put<uint32_t>(head, kMagic);
  put<uint32_t>(head, kVersion);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, metadata_.size());
  for (const auto& [key, v] : metadata_) {
    put_string(head, key);
    put<uint32_t>(head, static_cast<uint32_t>(v.type));
    put_value(head, v);
  }
  uint64_t offset = 0;
  auto align = [](uint64_t x) { return (x + kDefaultAlignment - 1) / kDefaultAlignment * kDefaultAlignment; };
  for (const auto& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) put<uint64_t>(head, d);
    put<uint32_t>(head, t.type);
    put<uint64_t>(head, offset);
    offset = align(offset + t.bytes.size());
  }
  head.resize(align(head.size()), 0);
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) fail("{}: cannot open for writing: {}", path, std::strerror(errno));
  bool ok = std::fwrite(head.data(), 1, head.size(), f.get()) == head.size();
  const std::vector<uint8_t> zeros(kDefaultAlignment, 0);
  for (const auto& t : tensors_) {
    ok = ok && std::fwrite(t.bytes.data(), 1, t.bytes.size(), f.get()) == t.bytes.size();
    const std::size_t pad = align(t.bytes.size()) - t.bytes.size();
    ok = ok && std::fwrite(zeros.data(), 1, pad, f.get()) == pad;
  }
  if (!ok || std::fflush(f.get()) != 0) fail("{}: write error: {}", path, std::strerror(errno));
}

Writer llama_gguf(const Checkpoint& checkpoint, const std::vector<std::string>& pieces,
                  const std::vector<float>& scores, TensorType type) {
  const ModelConfig& c = checkpoint.config();
  const ModelWeights& w = checkpoint.weights();
  Writer g;
  g.set_string("general.architecture", "llama");
  g.set_string("general.name", checkpoint.path());
  g.set_u32("llama.context_length", static_cast<uint32_t>(c.max_seq_len));
  g.set_u32("llama.embedding_length", static_cast<uint32_t>(c.dim));
  g.set_u32("llama.block_count", static_cast<uint32_t>(c.n_layers));
  g.set_u32("llama.feed_forward_length", static_cast<uint32_t>(c.hidden_dim));
  g.set_u32("llama.attention.head_count", static_cast<uint32_t>(c.n_heads));
  g.set_u32("llama.attention.head_count_kv", static_cast<uint32_t>(c.n_kv_heads));
  g.set_u32("llama.rope.dimension_count", static_cast<uint32_t>(c.head_dim()));
  g.set_f32("llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  g.set_f32("llama.rope.freq_base", c.rope_theta);
  g.set_string("tokenizer.ggml.model", "llama");
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (size_t i = 0; i < pieces.size(); ++i) {
    std::string p = pieces[i];
    for (size_t at; (at = p.find(' ')) != std::string::npos;) p.replace(at, 1, "\xE2\x96\x81");  // U+2581
    tokens.push_back(p);
    // 1 normal, 2 unknown, 3 control, 6 byte (llama.cpp's token types)
    types.push_back(i == 0 ? 2 : i <= 2 ? 3 : detail::byte_piece_value(pieces[i]) >= 0 ? 6 : 1);
  }
  g.set_strings("tokenizer.ggml.tokens", tokens);
  g.set_f32s("tokenizer.ggml.scores", scores);
  g.set_i32s("tokenizer.ggml.token_type", types);
  g.set_u32("tokenizer.ggml.unknown_token_id", 0);
  g.set_u32("tokenizer.ggml.bos_token_id", 1);
  g.set_u32("tokenizer.ggml.eos_token_id", 2);

  auto matrix = [&](const std::string& name, const Matrix& m) {
    std::vector<float> v(static_cast<std::size_t>(m.rows) * m.cols);
    for (int r = 0; r < m.rows; ++r) m.dequantize_row(r, v.data() + static_cast<std::size_t>(r) * m.cols);
    // Q8_0 blocks must not straddle rows: other widths fall back to F16, as llama.cpp's converter does.
    const TensorType t = type == TensorType::Q8_0 && m.cols % kQ8Block != 0 ? TensorType::F16 : type;
    g.add_tensor(name, {static_cast<uint64_t>(m.cols), static_cast<uint64_t>(m.rows)}, t, v.data());
  };
  auto vector = [&](const std::string& name, const float* v) {
    g.add_tensor(name, {static_cast<uint64_t>(c.dim)}, TensorType::F32, v);
  };
  matrix("token_embd.weight", w.token_embedding);
  vector("output_norm.weight", w.rms_final);
  if (!c.shared_classifier) matrix("output.weight", w.classifier);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    const LayerWeights& L = w.layers[static_cast<std::size_t>(l)];
    vector(b + "attn_norm.weight", L.rms_att);
    vector(b + "ffn_norm.weight", L.rms_ffn);
    matrix(b + "attn_q.weight", L.wq);
    matrix(b + "attn_k.weight", L.wk);
    matrix(b + "attn_v.weight", L.wv);
    matrix(b + "attn_output.weight", L.wo);
    matrix(b + "ffn_gate.weight", L.w1);
    matrix(b + "ffn_down.weight", L.w2);
    matrix(b + "ffn_up.weight", L.w3);
  }
  return g;
}

}  // namespace llm::gguf
