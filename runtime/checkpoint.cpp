// llama2.c checkpoint reader and writer.
//
// Three formats (all little-endian):
//  * legacy (version 0, run.c): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
//    seq_len; vocab_size < 0 means the classifier is stored separately), then fp32: token_embedding,
//    rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3 (each over all layers), rms_final, freq_cis_real,
//    freq_cis_imag (seq_len * head_size / 2 each, ignored on read), [classifier].
//  * version 1 (export.py version1_export): 256-byte header (uint32 magic "ak42", int32 version,
//    the 7 int32 dims, uint8 shared_classifier, zero padding), then fp32: rms_att, rms_ffn,
//    rms_final, token_embedding, wq, wk, wv, wo, w1, w2, w3 (each over all layers), [classifier].
//  * version 2 (export.py version2_export, runq.c): the same header plus int32 group_size right
//    after the shared_classifier byte (offset 37), then fp32 rms_att, rms_ffn, rms_final, then the
//    Q8_0 matrices token_embedding, wq (layer 0, 1, ...), wk, wv, wo, w1, w2, w3, [classifier].
//    Each matrix -- one per layer, as export.py quantizes `*[layer.attention.wq.weight for layer in
//    model.layers]` one weight at a time and runq.c's init_quantized_tensors maps them -- is stored
//    as its rows*cols int8 values followed by its rows*cols/group_size fp32 scales; the groups run
//    over the flattened matrix, so they straddle rows when cols % group_size != 0.
//
// Q8_0 matrices whose rows do not start on a group boundary are dequantized to fp32 at load (kept
// in owned_), so the forward pass only sees row-aligned Q8_0. fp32 arrays at an address that is not
// 4-byte aligned (scales after an odd-sized int8 array) are copied into owned_ as well.
#include "checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <thread>
#include <utility>

#include "error.h"
#include "gguf.h"
#include "log.h"
#include "thread_pool.h"

namespace llm {

namespace {

constexpr uint32_t kMagic = 0x616b3432;  // "ak42" read as a little-endian uint32
constexpr std::size_t kVersionedHeaderBytes = 256;
constexpr std::size_t kLegacyHeaderBytes = 7 * sizeof(int32_t);
constexpr std::size_t kSharedFlagOffset = 4 + 4 + 7 * 4;         // 36
constexpr std::size_t kGroupSizeOffset = kSharedFlagOffset + 1;  // 37 (unaligned)

constexpr int64_t kMaxDim = int64_t{1} << 20;  // dim, hidden_dim, n_layers, n_heads, n_kv_heads
constexpr int64_t kMaxVocab = int64_t{1} << 22;
constexpr int64_t kMaxSeqLen = int64_t{1} << 22;

// The header's values, widened so that nothing overflows while validating.
struct Dims {
  int64_t dim = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0, seq = 0;
  bool shared = true;
  int64_t group = 0;  // version 2 only

  int64_t head() const { return dim / heads; }
  int64_t kv_dim() const { return kv_heads * head(); }

  std::string describe(CheckpointFormat format) const {
    std::string s = fmt::format(
        "dim={} hidden_dim={} n_layers={} n_heads={} n_kv_heads={} vocab_size={} seq_len={} "
        "shared_classifier={}",
        dim, hidden, layers, heads, kv_heads, vocab, seq, shared ? 1 : 0);
    if (format == CheckpointFormat::V2Q8) s += fmt::format(" group_size={}", group);
    return s;
  }
};

Dims dims_of(const ModelConfig& c) {
  Dims d;
  d.dim = c.dim;
  d.hidden = c.hidden_dim;
  d.layers = c.n_layers;
  d.heads = c.n_heads;
  d.kv_heads = c.n_kv_heads;
  d.vocab = c.vocab_size;
  d.seq = c.max_seq_len;
  d.shared = c.shared_classifier;
  return d;
}

// One array of the file body.
enum class Field {
  TokenEmbedding,
  Classifier,
  RmsFinal,
  RmsAtt,
  RmsFfn,
  Wq,
  Wk,
  Wv,
  Wo,
  W1,
  W2,
  W3,
  FreqReal,
  FreqImag
};

struct Segment {
  Field field;
  int64_t layer;  // -1 for whole-model arrays
  uint64_t rows;
  uint64_t cols;
  bool matrix;  // a weight matrix (quantized in version 2); otherwise an fp32 vector/table
};

const char* field_name(Field f) {
  switch (f) {
    case Field::TokenEmbedding: return "token_embedding";
    case Field::Classifier: return "classifier";
    case Field::RmsFinal: return "rms_final";
    case Field::RmsAtt: return "rms_att";
    case Field::RmsFfn: return "rms_ffn";
    case Field::Wq: return "wq";
    case Field::Wk: return "wk";
    case Field::Wv: return "wv";
    case Field::Wo: return "wo";
    case Field::W1: return "w1";
    case Field::W2: return "w2";
    case Field::W3: return "w3";
    case Field::FreqReal: return "freq_cis_real";
    case Field::FreqImag: return "freq_cis_imag";
  }
  return "?";
}

// The name TensorFiller sees: "token_embedding", "rms_final", "classifier", "layers.{l}.wq", ...
std::string segment_name(const Segment& s) {
  if (s.layer < 0) return field_name(s.field);
  return fmt::format("layers.{}.{}", s.layer, field_name(s.field));
}

// Calls visit(Segment) for every array of the body, in file order. Dims must be validated.
template <typename Visit>
void for_each_segment(CheckpointFormat format, const Dims& d, Visit&& visit) {
  const uint64_t dim = d.dim, hidden = d.hidden, kv_dim = d.kv_dim(), vocab = d.vocab;
  auto per_layer = [&](Field f, uint64_t rows, uint64_t cols, bool matrix) {
    for (int64_t l = 0; l < d.layers; ++l) visit(Segment{f, l, rows, cols, matrix});
  };
  auto norms = [&](Field f) { per_layer(f, 1, dim, false); };
  auto attention = [&] {
    per_layer(Field::Wq, dim, dim, true);
    per_layer(Field::Wk, kv_dim, dim, true);
    per_layer(Field::Wv, kv_dim, dim, true);
    per_layer(Field::Wo, dim, dim, true);
  };
  auto ffn = [&] {
    per_layer(Field::W1, hidden, dim, true);
    per_layer(Field::W2, dim, hidden, true);
    per_layer(Field::W3, hidden, dim, true);
  };
  if (format == CheckpointFormat::LegacyF32) {
    visit(Segment{Field::TokenEmbedding, -1, vocab, dim, true});
    norms(Field::RmsAtt);
    attention();
    norms(Field::RmsFfn);
    ffn();
    visit(Segment{Field::RmsFinal, -1, 1, dim, false});
    visit(Segment{Field::FreqReal, -1, static_cast<uint64_t>(d.seq), static_cast<uint64_t>(d.head() / 2), false});
    visit(Segment{Field::FreqImag, -1, static_cast<uint64_t>(d.seq), static_cast<uint64_t>(d.head() / 2), false});
  } else {
    norms(Field::RmsAtt);
    norms(Field::RmsFfn);
    visit(Segment{Field::RmsFinal, -1, 1, dim, false});
    visit(Segment{Field::TokenEmbedding, -1, vocab, dim, true});
    attention();
    ffn();
  }
  if (!d.shared) visit(Segment{Field::Classifier, -1, vocab, dim, true});
}

struct Overflow {};

uint64_t checked_mul(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) throw Overflow{};
  return r;
}
uint64_t checked_add(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) throw Overflow{};
  return r;
}

bool quantized(CheckpointFormat format, const Segment& s) { return format == CheckpointFormat::V2Q8 && s.matrix; }

uint64_t segment_bytes(CheckpointFormat format, const Segment& s, int64_t group) {
  const uint64_t n = checked_mul(s.rows, s.cols);
  if (!quantized(format, s)) return checked_mul(n, sizeof(float));
  return checked_add(n, checked_mul(n / static_cast<uint64_t>(group), sizeof(float)));
}

std::size_t header_bytes(CheckpointFormat format) {
  return format == CheckpointFormat::LegacyF32 ? kLegacyHeaderBytes : kVersionedHeaderBytes;
}

// Throws Overflow when the total does not fit in 64 bits.
uint64_t expected_file_size(CheckpointFormat format, const Dims& d) {
  uint64_t total = header_bytes(format);
  for_each_segment(format, d, [&](const Segment& s) { total = checked_add(total, segment_bytes(format, s, d.group)); });
  return total;
}

// Everything about the header that does not depend on the file's size. `where` prefixes messages
// (the path), `note` is appended to them (how the header was read).
void validate_dims(const std::string& where, const Dims& d, CheckpointFormat format, const std::string& note) {
  struct Limit {
    const char* name;
    int64_t value;
    int64_t max;
  };
  const Limit limits[] = {
      {"dim", d.dim, kMaxDim},       {"hidden_dim", d.hidden, kMaxDim},   {"n_layers", d.layers, kMaxDim},
      {"n_heads", d.heads, kMaxDim}, {"n_kv_heads", d.kv_heads, kMaxDim}, {"vocab_size", d.vocab, kMaxVocab},
      {"seq_len", d.seq, kMaxSeqLen}};
  for (const Limit& l : limits) {
    if (l.value <= 0) fail("{}: {} is {}, expected a positive value{}", where, l.name, l.value, note);
    if (l.value > l.max) {
      fail("{}: {} is {}, which exceeds the limit of {} (absurd dimension){}", where, l.name, l.value, l.max, note);
    }
  }
  if (d.dim % d.heads != 0) {
    fail("{}: dim {} is not divisible by n_heads {} (expected dim % n_heads == 0){}", where, d.dim, d.heads, note);
  }
  if (d.heads % d.kv_heads != 0) {
    fail("{}: n_heads {} is not divisible by n_kv_heads {} (expected n_heads % n_kv_heads == 0){}", where, d.heads,
         d.kv_heads, note);
  }
  if (d.head() % 2 != 0) {
    fail("{}: head size {} (dim {} / n_heads {}) is odd; RoPE rotates pairs, expected an even head size{}", where,
         d.head(), d.dim, d.heads, note);
  }
  if (format == CheckpointFormat::V2Q8) {
    if (d.group <= 0) fail("{}: group_size is {}, expected a positive value{}", where, d.group, note);
    // Every quantized matrix (each layer's separately) must be a whole number of groups.
    for_each_segment(format, d, [&](const Segment& s) {
      if (!s.matrix || s.layer > 0) return;
      const uint64_t n = s.rows * s.cols;  // <= 2^42, validated above
      if (n % static_cast<uint64_t>(d.group) != 0) {
        fail(
            "{}: group_size {} does not divide the {} values of {} ({} x {}); expected a divisor of every "
            "quantized matrix's size{}",
            where, d.group, n, s.layer < 0 ? field_name(s.field) : fmt::format("each layer's {}", field_name(s.field)),
            s.rows, s.cols, note);
      }
    });
  }
}

float load_float(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

int32_t load_i32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// export.py quantize_q80: per group, scale = max|x| / 127, q = round(x / scale) (half to even, as
// torch.round). A zero group gets scale 0 and q 0.
void quantize_q80(const float* x, std::size_t n, std::size_t group, int8_t* q, float* scales) {
  for (std::size_t g = 0; g * group < n; ++g) {
    const float* xs = x + g * group;
    float wmax = 0.0f;
    for (std::size_t i = 0; i < group; ++i) wmax = std::max(wmax, std::fabs(xs[i]));
    const float scale = wmax / 127.0f;
    scales[g] = scale;
    for (std::size_t i = 0; i < group; ++i) {
      float v = scale == 0.0f ? 0.0f : std::nearbyint(xs[i] / scale);
      v = std::min(127.0f, std::max(-127.0f, v));
      q[g * group + i] = static_cast<int8_t>(v);
    }
  }
}

// A FILE* that names the path in every error and removes the partial file on failure.
class Writer {
 public:
  explicit Writer(const std::string& path) : path_(path) {
    file_ = std::fopen(path.c_str(), "wb");
    if (file_ == nullptr) {
      int err = errno;
      fail("{}: cannot open for writing: {}", path, std::strerror(err));
    }
  }
  ~Writer() {
    if (file_ != nullptr) {  // not committed: an error is on its way
      std::fclose(file_);
      std::remove(path_.c_str());
    }
  }
  void write(const void* data, std::size_t bytes) {
    if (bytes != 0 && std::fwrite(data, 1, bytes, file_) != bytes) {
      int err = errno;
      fail("{}: write failed after {} bytes: {}", path_, written_, std::strerror(err));
    }
    written_ += bytes;
  }
  uint64_t written() const { return written_; }
  void commit() {
    FILE* f = std::exchange(file_, nullptr);
    if (std::fflush(f) != 0 || std::ferror(f) != 0) {
      int err = errno;
      std::fclose(f);
      std::remove(path_.c_str());
      fail("{}: write failed: {}", path_, std::strerror(err));
    }
    if (std::fclose(f) != 0) {
      int err = errno;
      std::remove(path_.c_str());
      fail("{}: close failed: {}", path_, std::strerror(err));
    }
  }

 private:
  std::string path_;
  FILE* file_ = nullptr;
  uint64_t written_ = 0;
};

}  // namespace

void validate_model_config(const std::string& where, const ModelConfig& config) {
  validate_dims(where, dims_of(config), CheckpointFormat::LegacyF32, "");
}

const char* checkpoint_format_name(CheckpointFormat format) {
  switch (format) {
    case CheckpointFormat::LegacyF32: return "legacy fp32";
    case CheckpointFormat::V1F32: return "v1 fp32";
    case CheckpointFormat::V2Q8: return "v2 Q8_0";
    case CheckpointFormat::Gguf: return "GGUF";
    case CheckpointFormat::HfSafetensors: return "Hugging Face safetensors";
  }
  return "unknown";
}

std::unique_ptr<Checkpoint> Checkpoint::open(const std::string& path, LoadMode mode) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->path_ = path;
  if (std::error_code ec; std::filesystem::is_directory(path, ec)) {
    ckpt->format_ = CheckpointFormat::HfSafetensors;
    ckpt->load_hf();
    return ckpt;
  }
  ckpt->file_ = MappedFile(path, mode);
  const uint8_t* data = ckpt->file_.data();
  const std::size_t size = ckpt->file_.size();

  // --- Header -----------------------------------------------------------------------------------
  if (size < sizeof(uint32_t)) {
    fail(
        "{}: file is {} bytes, too small for a checkpoint header (a legacy header is {} bytes, a "
        "versioned one {})",
        path, size, kLegacyHeaderBytes, kVersionedHeaderBytes);
  }
  Dims d;
  CheckpointFormat format;
  std::string note;
  const uint32_t magic = load_u32(data);
  if (magic == gguf::kMagic) {
    ckpt->format_ = CheckpointFormat::Gguf;
    ckpt->load_gguf();
    return ckpt;
  }
  if (magic == kMagic) {
    if (size < kVersionedHeaderBytes) {
      fail("{}: truncated header: file is {} bytes but a version 1/2 header is {} bytes", path, size,
           kVersionedHeaderBytes);
    }
    const int32_t version = load_i32(data + 4);
    if (version == 1) {
      format = CheckpointFormat::V1F32;
    } else if (version == 2) {
      format = CheckpointFormat::V2Q8;
    } else {
      fail(
          "{}: unsupported checkpoint version {}; supported: 1 (fp32) and 2 (Q8_0) after the 'ak42' "
          "magic, or the legacy header-less fp32 format",
          path, version);
    }
    const uint8_t* p = data + 8;
    d.dim = load_i32(p);
    d.hidden = load_i32(p + 4);
    d.layers = load_i32(p + 8);
    d.heads = load_i32(p + 12);
    d.kv_heads = load_i32(p + 16);
    d.vocab = load_i32(p + 20);
    d.seq = load_i32(p + 24);
    const uint8_t shared = data[kSharedFlagOffset];
    if (shared > 1) fail("{}: shared_classifier byte is {}, expected 0 or 1", path, shared);
    d.shared = shared == 1;
    if (format == CheckpointFormat::V2Q8) d.group = load_i32(data + kGroupSizeOffset);
  } else {
    format = CheckpointFormat::LegacyF32;
    note = fmt::format(
        " (read as a legacy llama2.c header: the first 4 bytes 0x{:08x} are neither the version 1/2 magic "
        "0x{:08x} 'ak42' nor GGUF's 'GGUF')",
        magic, kMagic);
    if (size < kLegacyHeaderBytes) {
      fail("{}: file is {} bytes, too small for a legacy header of {} bytes{}", path, size, kLegacyHeaderBytes, note);
    }
    d.dim = load_i32(data);
    d.hidden = load_i32(data + 4);
    d.layers = load_i32(data + 8);
    d.heads = load_i32(data + 12);
    d.kv_heads = load_i32(data + 16);
    const int64_t vocab = load_i32(data + 20);
    d.shared = vocab > 0;  // negative vocab_size: separate classifier
    d.vocab = vocab < 0 ? -vocab : vocab;
    d.seq = load_i32(data + 24);
  }
  validate_dims(path, d, format, note);

  // --- Size -------------------------------------------------------------------------------------
  uint64_t expected = 0;
  try {
    expected = expected_file_size(format, d);
  } catch (const Overflow&) {
    fail("{}: header ({}, {}) implies a file size that overflows 64 bits (absurd dimensions){}", path,
         checkpoint_format_name(format), d.describe(format), note);
  }
  if (size != expected) {
    fail("{}: {}: file is {} bytes but the header ({}, {}) implies {} bytes ({} bytes {})", path,
         size < expected ? "truncated" : "trailing bytes", size, checkpoint_format_name(format), d.describe(format),
         expected, size < expected ? expected - size : size - expected, size < expected ? "missing" : "too many");
  }

  // --- Config -----------------------------------------------------------------------------------
  ModelConfig& c = ckpt->config_;
  c.dim = static_cast<int>(d.dim);
  c.hidden_dim = static_cast<int>(d.hidden);
  c.n_layers = static_cast<int>(d.layers);
  c.n_heads = static_cast<int>(d.heads);
  c.n_kv_heads = static_cast<int>(d.kv_heads);
  c.vocab_size = static_cast<int>(d.vocab);
  c.max_seq_len = static_cast<int>(d.seq);
  c.shared_classifier = d.shared;
  ckpt->format_ = format;

  // --- Weights ----------------------------------------------------------------------------------
  Checkpoint& ck = *ckpt;
  auto floats = [&ck](const uint8_t* p, std::size_t n) -> const float* {
    if (reinterpret_cast<uintptr_t>(p) % alignof(float) == 0) return reinterpret_cast<const float*>(p);
    ck.owned_.emplace_back(n);
    std::memcpy(ck.owned_.back().data(), p, n * sizeof(float));
    return ck.owned_.back().data();
  };
  ModelWeights& w = ck.weights_;
  w.layers.assign(static_cast<std::size_t>(d.layers), LayerWeights{});
  const int group = static_cast<int>(d.group);
  std::size_t converted_matrices = 0, converted_bytes = 0;
  std::string converted_names;

  std::size_t offset = header_bytes(format);
  for_each_segment(format, d, [&](const Segment& s) {
    const uint8_t* p = data + offset;
    const std::size_t n = static_cast<std::size_t>(s.rows * s.cols);
    offset += static_cast<std::size_t>(segment_bytes(format, s, d.group));
    if (s.field == Field::FreqReal || s.field == Field::FreqImag) return;  // RoPE is computed at run time

    Matrix m;
    m.rows = static_cast<int>(s.rows);
    m.cols = static_cast<int>(s.cols);
    if (!quantized(format, s)) {
      m.type = WeightType::F32;
      m.f32 = floats(p, n);
    } else if (s.cols % static_cast<uint64_t>(group) == 0) {
      m.type = WeightType::Q8_0;
      m.q = reinterpret_cast<const int8_t*>(p);
      m.scales = floats(p + n, n / group);
      m.group_size = group;
    } else {
      // Groups straddle rows: dequantize to fp32 so the forward pass sees row-aligned data only.
      ck.owned_.emplace_back(n);
      float* out = ck.owned_.back().data();
      const int8_t* q = reinterpret_cast<const int8_t*>(p);
      const uint8_t* sp = p + n;
      for (std::size_t g = 0; g < n / group; ++g) {
        const float scale = load_float(sp + g * sizeof(float));
        for (std::size_t i = g * group; i < (g + 1) * group; ++i) out[i] = static_cast<float>(q[i]) * scale;
      }
      m.type = WeightType::F32;
      m.f32 = out;
      ++converted_matrices;
      converted_bytes += n * sizeof(float);
      if (s.layer <= 0) {
        converted_names +=
            fmt::format("{}{} ({}x{})", converted_names.empty() ? "" : ", ", field_name(s.field), s.rows, s.cols);
      }
    }

    LayerWeights* layer = s.layer >= 0 ? &w.layers[static_cast<std::size_t>(s.layer)] : nullptr;
    switch (s.field) {
      case Field::TokenEmbedding: w.token_embedding = m; break;
      case Field::Classifier: w.classifier = m; break;
      case Field::RmsFinal: w.rms_final = m.f32; break;
      case Field::RmsAtt: layer->rms_att = m.f32; break;
      case Field::RmsFfn: layer->rms_ffn = m.f32; break;
      case Field::Wq: layer->wq = m; break;
      case Field::Wk: layer->wk = m; break;
      case Field::Wv: layer->wv = m; break;
      case Field::Wo: layer->wo = m; break;
      case Field::W1: layer->w1 = m; break;
      case Field::W2: layer->w2 = m; break;
      case Field::W3: layer->w3 = m; break;
      case Field::FreqReal:
      case Field::FreqImag: break;
    }
  });
  if (d.shared) w.classifier = w.token_embedding;

  if (converted_matrices > 0) {
    log().debug(
        "{}: {} Q8_0 matrices with cols not a multiple of group_size {} dequantized to fp32 at load "
        "({} bytes): {}",
        path, converted_matrices, group, converted_bytes, converted_names);
  }
  log().debug("{}: {} checkpoint, {}, {} bytes", path, checkpoint_format_name(format), d.describe(format), size);
  return ckpt;
}

void write_checkpoint(const std::string& path, const ModelConfig& config, CheckpointFormat format,
                      const TensorFiller& fill, int group_size) {
  if (format == CheckpointFormat::Gguf || format == CheckpointFormat::HfSafetensors)
    fail("{}: write_checkpoint writes llama2.c formats; GGUF: gguf_writer.h", path);
  Dims d = dims_of(config);
  d.group = group_size;
  validate_dims(path, d, format, "");
  if (format != CheckpointFormat::V2Q8) d.group = 0;
  uint64_t expected = 0;
  try {
    expected = expected_file_size(format, d);
  } catch (const Overflow&) {
    fail("{}: config ({}) implies a file size that overflows 64 bits", path, d.describe(format));
  }

  Writer out(path);
  // Header.
  if (format == CheckpointFormat::LegacyF32) {
    const int32_t header[7] = {config.dim,        config.hidden_dim,
                               config.n_layers,   config.n_heads,
                               config.n_kv_heads, config.shared_classifier ? config.vocab_size : -config.vocab_size,
                               config.max_seq_len};
    out.write(header, sizeof header);
  } else {
    uint8_t header[kVersionedHeaderBytes] = {};
    const int32_t version = format == CheckpointFormat::V1F32 ? 1 : 2;
    const int32_t fields[9] = {static_cast<int32_t>(kMagic),
                               version,
                               config.dim,
                               config.hidden_dim,
                               config.n_layers,
                               config.n_heads,
                               config.n_kv_heads,
                               config.vocab_size,
                               config.max_seq_len};
    std::memcpy(header, fields, sizeof fields);
    header[kSharedFlagOffset] = config.shared_classifier ? 1 : 0;
    if (format == CheckpointFormat::V2Q8) {
      const int32_t gs = group_size;
      std::memcpy(header + kGroupSizeOffset, &gs, sizeof gs);
    }
    out.write(header, sizeof header);
  }

  // Body, one array at a time.
  ThreadPool pool(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  std::vector<float> values;
  std::vector<int8_t> q;
  std::vector<float> scales;
  for_each_segment(format, d, [&](const Segment& s) {
    const std::size_t n = static_cast<std::size_t>(s.rows * s.cols);
    values.assign(n, 0.0f);
    if (s.field == Field::FreqReal || s.field == Field::FreqImag) {
      // As run.c's export: freq_i = 1 / 10000^(2i / head_size), real = cos(pos freq), imag = sin(pos freq).
      const std::size_t half = static_cast<std::size_t>(s.cols);
      const double head_size = static_cast<double>(2 * half);
      for (std::size_t pos = 0; pos < s.rows; ++pos) {
        for (std::size_t i = 0; i < half; ++i) {
          const double freq = 1.0 / std::pow(10000.0, static_cast<double>(2 * i) / head_size);
          const double angle = static_cast<double>(pos) * freq;
          values[pos * half + i] = static_cast<float>(s.field == Field::FreqReal ? std::cos(angle) : std::sin(angle));
        }
      }
    } else {
      fill(segment_name(s), values.data(), n);
    }
    if (!quantized(format, s)) {
      out.write(values.data(), n * sizeof(float));
      return;
    }
    const std::size_t gs = static_cast<std::size_t>(group_size);
    for (float v : values) {
      if (!std::isfinite(v)) {
        fail("{}: tensor {} has a non-finite value ({}); cannot quantize to Q8_0", path, segment_name(s), v);
      }
    }
    q.resize(n);
    scales.resize(n / gs);
    // Groups are independent: quantized in parallel ranges of whole groups (a 7B model is 6.7e9 values).
    const int64_t groups = static_cast<int64_t>(n / gs);
    pool.parallel_for(groups, std::max<int64_t>(1, (int64_t{1} << 20) / static_cast<int64_t>(gs)),
                      [&](int64_t begin, int64_t end) {
                        quantize_q80(values.data() + begin * gs, static_cast<std::size_t>(end - begin) * gs, gs,
                                     q.data() + begin * gs, scales.data() + begin);
                      });
    out.write(q.data(), n);
    out.write(scales.data(), scales.size() * sizeof(float));
  });
  if (out.written() != expected) {
    fail("{}: internal error: wrote {} bytes, expected {}", path, out.written(), expected);
  }
  out.commit();
}

}  // namespace llm
