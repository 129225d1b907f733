// load_tokenizer (format detection by content) and Utf8StreamDecoder.

#include "tokenizer.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "error.h"
#include "log.h"
#include "mapped_file.h"
#include "tokenizer_internal.h"

namespace llm {
namespace {

std::string read_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (!fs::exists(status)) fail("{}: tokenizer file does not exist", path);
  if (fs::is_directory(status)) fail("{}: is a directory, expected a tokenizer file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open tokenizer file: {}", path, std::strerror(errno));
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("{}: error reading tokenizer file", path);
  if (data.empty()) fail("{}: tokenizer file is empty", path);
  return data;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  {  // A GGUF model file carries its tokenizer; mapped, not read (it may hold gigabytes of weights).
    std::ifstream in(path, std::ios::binary);
    char magic[4] = {};
    if (in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0) {
      const MappedFile file(path);
      auto tok = detail::gguf_tokenizer(file.data(), file.size(), path);
      log().debug("{}: tokenizer from GGUF metadata, {} pieces", path, tok->vocab_size());
      return tok;
    }
  }
  const std::string data = read_file(path);
  if (data.find_first_not_of(" \t\r\n") != std::string::npos && data[data.find_first_not_of(" \t\r\n")] == '{') {
    auto tok = detail::parse_hf_tokenizer_json(data, path);  // JSON: only tokenizer.json is that
    log().debug("{}: tokenizer.json, byte-level BPE, {} tokens", path, tok->vocab_size());
    return tok;
  }
  std::string llama2c_error, spm_error;
  try {
    auto tok = detail::parse_llama2c_tokenizer(data, path);
    log().debug("{}: llama2.c tokenizer, {} pieces", path, tok->vocab_size());
    return tok;
  } catch (const Error& e) {
    llama2c_error = e.what();
  }
  try {
    auto tok = detail::parse_sentencepiece_tokenizer(data, path);
    log().debug("{}: SentencePiece model, {} pieces", path, tok->vocab_size());
    return tok;
  } catch (const Error& e) {
    spm_error = e.what();
  }
  // Each attempt's message starts with the path; drop that repetition.
  auto strip = [&](std::string s) { return s.rfind(path + ": ", 0) == 0 ? s.substr(path.size() + 2) : s; };
  fail("{}: not a SentencePiece model or llama2.c tokenizer.bin ({}; {})", path, strip(spm_error),
       strip(llama2c_error));
}

// ---- Utf8StreamDecoder ----

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Bytes in a sequence led by `lead` (0 for a byte that cannot lead one), and the valid range of
// the second byte (it excludes overlongs, surrogates and code points past U+10FFFF).
struct Lead {
  int length;
  unsigned char lo, hi;
};

Lead classify(unsigned char b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b >= 0xE1 && b <= 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};  // stray continuation byte, C0/C1 (always overlong), F5..FF
}

}  // namespace

std::string Utf8StreamDecoder::push(std::string_view bytes) {
  pending_.append(bytes.data(), bytes.size());
  std::string out;
  out.reserve(pending_.size());
  size_t i = 0;
  const size_t n = pending_.size();
  while (i < n) {
    const auto b = static_cast<unsigned char>(pending_[i]);
    const Lead lead = classify(b);
    if (lead.length == 1) {
      out += static_cast<char>(b);
      ++i;
      continue;
    }
    if (lead.length == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    // Longest valid prefix of the sequence (Unicode's "maximal subpart").
    size_t k = 1;
    while (k < static_cast<size_t>(lead.length) && i + k < n) {
      const auto c = static_cast<unsigned char>(pending_[i + k]);
      const unsigned char lo = k == 1 ? lead.lo : 0x80, hi = k == 1 ? lead.hi : 0xBF;
      if (c < lo || c > hi) break;
      ++k;
    }
    if (k == static_cast<size_t>(lead.length)) {
      out.append(pending_, i, k);
      i += k;
    } else if (i + k == n) {
      break;  // a valid but incomplete tail: hold it back for the next push
    } else {
      out += kReplacement;  // interrupted: one U+FFFD for the maximal subpart, then resume at the
      i += k;               // offending byte
    }
  }
  pending_.erase(0, i);
  return out;
}

std::string Utf8StreamDecoder::flush() {
  std::string out = push("");
  if (!pending_.empty()) out += kReplacement;  // only ever one incomplete sequence is held back
  pending_.clear();
  return out;
}

}  // namespace llm

namespace llm::detail {

int byte_piece_value(std::string_view piece) {
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  const int hi = hex(piece[3]), lo = hex(piece[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace llm::detail
