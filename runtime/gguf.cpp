#include "gguf.h"

#include <cstring>

#include "error.h"

namespace llm::gguf {
namespace {

// Limits that no real file reaches; a corrupt count must not make us allocate terabytes.
constexpr uint64_t kMaxStringBytes = uint64_t{1} << 30;
constexpr uint64_t kMaxArrayItems = uint64_t{1} << 28;
constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 4;

// A bounds-checked little-endian reader over the file; every error names the file and the offset.
class Reader {
 public:
  Reader(const uint8_t* data, std::size_t size, const std::string& path) : data_(data), size_(size), path_(path) {}

  template <typename T>
  T pod(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const char* what) {
    const uint64_t n = pod<uint64_t>(what);
    if (n > kMaxStringBytes) fail("{}: GGUF: {} at byte offset {} claims a {}-byte string", path_, what, pos_ - 8, n);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  Value value(ValueType type, const std::string& key, int depth = 0) {
    Value v;
    v.type = type;
    const char* what = "metadata value";
    switch (type) {
      case ValueType::U8: v.u = pod<uint8_t>(what); break;
      case ValueType::I8: v.i = pod<int8_t>(what); break;
      case ValueType::U16: v.u = pod<uint16_t>(what); break;
      case ValueType::I16: v.i = pod<int16_t>(what); break;
      case ValueType::U32: v.u = pod<uint32_t>(what); break;
      case ValueType::I32: v.i = pod<int32_t>(what); break;
      case ValueType::U64: v.u = pod<uint64_t>(what); break;
      case ValueType::I64: v.i = pod<int64_t>(what); break;
      case ValueType::F32: v.f = pod<float>(what); break;
      case ValueType::F64: v.f = pod<double>(what); break;
      case ValueType::Bool: v.u = pod<uint8_t>(what) != 0; break;
      case ValueType::String: v.s = string(what); break;
      case ValueType::Array: {
        if (depth >= kMaxArrayDepth) fail("{}: GGUF: metadata '{}' nests arrays deeper than {}", path_, key, depth);
        v.elem = static_cast<ValueType>(pod<uint32_t>("array element type"));
        if (static_cast<uint32_t>(v.elem) > static_cast<uint32_t>(ValueType::F64))
          fail("{}: GGUF: metadata '{}' is an array of unknown value type {}", path_, key,
               static_cast<uint32_t>(v.elem));
        const uint64_t n = pod<uint64_t>("array length");
        if (n > kMaxArrayItems) fail("{}: GGUF: metadata '{}' claims an array of {} items", path_, key, n);
        v.array.reserve(n);
        for (uint64_t k = 0; k < n; ++k) v.array.push_back(value(v.elem, key, depth + 1));
        break;
      }
      default:
        fail("{}: GGUF: metadata '{}' has unknown value type {} at byte offset {}", path_, key,
             static_cast<uint32_t>(type), pos_ - 4);
    }
    return v;
  }
  std::size_t pos() const { return pos_; }

 private:
  void need(uint64_t n, const char* what) const {
    if (n > size_ - pos_)
      fail("{}: GGUF: truncated: {} at byte offset {} needs {} bytes, {} are left", path_, what, pos_, n, size_ - pos_);
  }
  const uint8_t* data_;
  std::size_t size_, pos_ = 0;
  const std::string& path_;
};

}  // namespace

const char* tensor_type_name(uint32_t type) {
  static const char* names[] = {"F32",     "F16",    "Q4_0",    "Q4_1",  "Q4_2",   "Q4_3",  "Q5_0",  "Q5_1",
                                "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",  "Q4_K",   "Q5_K",  "Q6_K",  "Q8_K",
                                "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
                                "I8",      "I16",    "I32",     "I64",   "F64",    "IQ1_M", "BF16"};
  return type < sizeof(names) / sizeof(names[0]) ? names[type] : "unknown";
}

const char* value_type_name(ValueType type) {
  static const char* names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                "bool", "string", "array", "u64", "i64", "f64"};
  const auto t = static_cast<uint32_t>(type);
  return t < sizeof(names) / sizeof(names[0]) ? names[t] : "unknown";
}

bool Value::is_integer() const {
  switch (type) {
    case ValueType::U8:
    case ValueType::I8:
    case ValueType::U16:
    case ValueType::I16:
    case ValueType::U32:
    case ValueType::I32:
    case ValueType::U64:
    case ValueType::I64: return true;
    default: return false;
  }
}

int64_t Value::integer() const {
  const bool is_unsigned = type == ValueType::U8 || type == ValueType::U16 || type == ValueType::U32 ||
                           type == ValueType::U64 || type == ValueType::Bool;
  return is_unsigned ? static_cast<int64_t>(u) : i;
}

uint64_t TensorInfo::elements() const {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return n;
}

uint64_t tensor_bytes(uint32_t type, uint64_t elements) {
  switch (static_cast<TensorType>(type)) {
    case TensorType::F32: return elements * 4;
    case TensorType::F16:
    case TensorType::BF16: return elements * 2;
    case TensorType::Q8_0: return elements % kQ8Block ? 0 : elements / kQ8Block * kQ8BlockBytes;
  }
  return 0;
}

const TensorInfo* File::tensor(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const Value* File::find(const std::string& key) const {
  auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

File parse(const uint8_t* data, std::size_t size, const std::string& path) {
  Reader r(data, size, path);
  File f;
  if (r.pod<uint32_t>("magic") != kMagic) fail("{}: not a GGUF file (the first 4 bytes are not 'GGUF')", path);
  f.version = r.pod<uint32_t>("version");
  if (f.version != kVersion)
    fail("{}: GGUF version {}; this runtime reads version {} (re-convert with a current llama.cpp)", path, f.version,
         kVersion);
  const uint64_t n_tensors = r.pod<uint64_t>("tensor count"), n_kv = r.pod<uint64_t>("metadata count");
  if (n_tensors > size / 24 || n_kv > size / 13)  // each needs at least that many bytes
    fail("{}: GGUF: header claims {} tensors and {} metadata entries, impossible in {} bytes", path, n_tensors, n_kv,
         size);
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = r.string("metadata key");
    const auto type = static_cast<ValueType>(r.pod<uint32_t>("metadata value type"));
    Value v = r.value(type, key);
    if (!f.metadata.emplace(key, std::move(v)).second) fail("{}: GGUF: metadata key '{}' appears twice", path, key);
  }
  if (const Value* a = f.find("general.alignment")) {
    if (a->type != ValueType::U32 || a->u == 0 || (a->u & (a->u - 1)) != 0)
      fail("{}: GGUF: general.alignment must be a power of two (u32), got {}", path, a->u);
    f.alignment = a->u;
  }
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo t;
    t.name = r.string("tensor name");
    const uint32_t n_dims = r.pod<uint32_t>("tensor dimension count");
    if (n_dims == 0 || n_dims > kMaxDims)
      fail("{}: GGUF: tensor '{}' has {} dimensions (1 to {} expected)", path, t.name, n_dims, kMaxDims);
    for (uint32_t d = 0; d < n_dims; ++d) {
      t.dims.push_back(r.pod<uint64_t>("tensor dimension"));
      if (t.dims.back() == 0 || t.dims.back() > (uint64_t{1} << 32))
        fail("{}: GGUF: tensor '{}' has dimension {} of size {}", path, t.name, d, t.dims.back());
    }
    t.type = r.pod<uint32_t>("tensor type");
    t.offset = r.pod<uint64_t>("tensor offset");
    f.tensors.push_back(std::move(t));
  }
  const uint64_t data_start = (r.pos() + f.alignment - 1) / f.alignment * f.alignment;
  for (auto& t : f.tensors) {
    t.bytes = tensor_bytes(t.type, t.elements());
    if (t.offset % f.alignment != 0)
      fail("{}: GGUF: tensor '{}' starts at data offset {}, not a multiple of the alignment {}", path, t.name, t.offset,
           f.alignment);
    t.offset += data_start;
    if (t.bytes != 0 && (t.offset > size || t.bytes > size - t.offset))
      fail("{}: GGUF: tensor '{}' ({} bytes at file offset {}) runs past the end of the {}-byte file (truncated?)",
           path, t.name, t.bytes, t.offset, size);
  }
  return f;
}

}  // namespace llm::gguf
