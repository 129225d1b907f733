// The llama2.c tokenizer.bin format (karpathy/llama2.c, run.c: build_tokenizer, encode, decode).
//
// File layout, little-endian: int32 max_token_length, then one entry per token until EOF:
// float32 score, int32 len, `len` bytes of piece. The vocabulary size is not stored; it is the
// number of entries. BOS = 1 and EOS = 2 are fixed by the format (run.c hard-codes them).
//
// Encoding follows run.c: a dummy-prefix " " before non-empty text, one symbol per UTF-8 character
// (characters that are no piece fall back to their byte tokens "<0xAB>"), then repeatedly merge
// the adjacent pair whose concatenation is a piece with the highest score (leftmost on ties). The
// merge loop uses a priority queue (as SentencePiece's BPE does) instead of run.c's O(n^2) scan;
// the result is the same.

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <queue>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "error.h"
#include "tokenizer_internal.h"

namespace llm::detail {
namespace {

constexpr int kUnkId = 0;
constexpr int kBosId = 1;
constexpr int kEosId = 2;
// No real piece comes near this; a larger header value means the file is something else.
constexpr int32_t kMaxSaneTokenLength = 1 << 16;

int32_t read_i32(const std::string& data, size_t offset) {
  int32_t v;
  std::memcpy(&v, data.data() + offset, sizeof v);
  return v;
}

float read_f32(const std::string& data, size_t offset) {
  float v;
  std::memcpy(&v, data.data() + offset, sizeof v);
  return v;
}

// Length of the UTF-8 sequence starting at s[i] when it is a complete, valid one; else 1 (the byte
// is then a symbol of its own, which falls back to its byte token).
size_t utf8_char_length(std::string_view s, size_t i) {
  auto b = static_cast<unsigned char>(s[i]);
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) {
    n = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return 1;
  }
  if (i + n > s.size()) return 1;
  for (size_t k = 1; k < n; ++k) {
    auto c = static_cast<unsigned char>(s[i + k]);
    if (c < lo || c > hi) return 1;
    lo = 0x80;
    hi = 0xBF;
  }
  return n;
}

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores)
      : pieces_(std::move(pieces)), scores_(std::move(scores)) {
    const int n = static_cast<int>(pieces_.size());
    byte_value_.assign(n, -1);
    byte_id_.fill(-1);
    all_pieces_.reserve(n);
    mergeable_.reserve(n);
    for (int id = 0; id < n; ++id) {
      std::string_view piece = pieces_[id];
      all_pieces_.emplace(piece, id);  // first occurrence wins on duplicates
      int b = byte_piece_value(piece);
      byte_value_[id] = b;
      if (b >= 0) continue;
      if (id == kUnkId || id == kBosId || id == kEosId) continue;
      mergeable_.emplace(piece, id);
    }
    // Byte tokens are looked up by their piece text, not assumed to sit at ids 3..258.
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      auto it = all_pieces_.find(name);
      if (it != all_pieces_.end()) byte_id_[b] = it->second;
    }
  }

  std::vector<int> encode(std::string_view text, bool add_bos) const override {
    std::vector<int> out;
    if (add_bos) out.push_back(kBosId);
    if (text.empty()) return out;

    std::string buf;
    buf.reserve(text.size() + 1);
    buf += ' ';  // run.c's dummy prefix
    buf.append(text.data(), text.size());
    const std::string_view s(buf);

    struct Symbol {
      int id;
      int prev, next;
      uint32_t start, len;  // bytes of `s`; len == 0 once merged away
      bool frozen;          // a byte-fallback token: never merges
    };
    std::vector<Symbol> symbols;
    symbols.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
      size_t n = utf8_char_length(s, i);
      auto it = mergeable_.find(s.substr(i, n));
      if (it != mergeable_.end()) {
        symbols.push_back({it->second, 0, 0, static_cast<uint32_t>(i), static_cast<uint32_t>(n), false});
      } else {
        for (size_t k = 0; k < n; ++k) {
          int id = byte_id_[static_cast<unsigned char>(s[i + k])];
          symbols.push_back({id >= 0 ? id : kUnkId, 0, 0, static_cast<uint32_t>(i + k), 1, true});
        }
      }
      i += n;
    }
    const int count = static_cast<int>(symbols.size());
    for (int i = 0; i < count; ++i) {
      symbols[i].prev = i - 1;
      symbols[i].next = i + 1 < count ? i + 1 : -1;
    }

    struct Pair {
      float score;
      int left, right;
      uint32_t len;  // combined length when queued; a mismatch later means the pair is stale
      int id;
    };
    auto worse = [](const Pair& a, const Pair& b) {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    };
    std::priority_queue<Pair, std::vector<Pair>, decltype(worse)> agenda(worse);
    auto maybe_add = [&](int left, int right) {
      if (left < 0 || right < 0) return;
      const Symbol& l = symbols[left];
      const Symbol& r = symbols[right];
      if (l.frozen || r.frozen) return;
      auto it = mergeable_.find(s.substr(l.start, l.len + r.len));
      if (it == mergeable_.end()) return;
      agenda.push({scores_[it->second], left, right, l.len + r.len, it->second});
    };
    for (int i = 0; i + 1 < count; ++i) maybe_add(i, i + 1);

    while (!agenda.empty()) {
      Pair top = agenda.top();
      agenda.pop();
      Symbol& l = symbols[top.left];
      Symbol& r = symbols[top.right];
      if (l.len == 0 || r.len == 0 || l.next != top.right || l.len + r.len != top.len) continue;
      l.id = top.id;
      l.len += r.len;
      r.len = 0;
      l.next = r.next;
      if (r.next >= 0) symbols[r.next].prev = top.left;
      maybe_add(l.prev, top.left);
      maybe_add(top.left, l.next);
    }

    for (int i = count > 0 ? 0 : -1; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
    return out;
  }

  std::string decode_piece(int prev_token, int token) const override {
    if (token < 0 || token >= vocab_size()) {
      fail("token id {} is out of range for a llama2.c vocabulary of {} pieces", token, vocab_size());
    }
    if (token == kBosId || token == kEosId) return "";
    if (byte_value_[token] >= 0) return std::string(1, static_cast<char>(byte_value_[token]));
    std::string_view piece = pieces_[token];
    // After BOS, SentencePiece drops the dummy-prefix space (llama2.c PR #89).
    if (prev_token == kBosId && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
    return std::string(piece);
  }

  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int bos_id() const override { return kBosId; }
  int eos_id() const override { return kEosId; }
  std::string kind() const override { return "llama2c"; }

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int> byte_value_;  // per id: the byte of a "<0xAB>" piece, or -1
  std::array<int, 256> byte_id_;
  // Views into pieces_, which never changes after construction.
  std::unordered_map<std::string_view, int> all_pieces_;
  std::unordered_map<std::string_view, int> mergeable_;  // no byte pieces, no unk/BOS/EOS
};

}  // namespace

std::unique_ptr<Tokenizer> make_llama2c_tokenizer(std::vector<std::string> pieces, std::vector<float> scores) {
  return std::make_unique<Llama2cTokenizer>(std::move(pieces), std::move(scores));
}

std::unique_ptr<Tokenizer> parse_llama2c_tokenizer(const std::string& data, const std::string& path) {
  Vocabulary v = parse_llama2c_vocabulary(data, path);
  return make_llama2c_tokenizer(std::move(v.pieces), std::move(v.scores));
}

Vocabulary parse_llama2c_vocabulary(const std::string& data, const std::string& path) {
  if (data.size() < 4) {
    fail("{}: llama2.c tokenizer: file is {} bytes, too short for the 4-byte max_token_length header", path,
         data.size());
  }
  const int32_t max_len = read_i32(data, 0);
  if (max_len <= 0 || max_len > kMaxSaneTokenLength) {
    fail("{}: llama2.c tokenizer: max_token_length {} at byte offset 0 is not in 1..{}", path, max_len,
         kMaxSaneTokenLength);
  }
  std::vector<std::string> pieces;
  std::vector<float> scores;
  size_t offset = 4;
  while (offset < data.size()) {
    const size_t entry = offset;
    const size_t left = data.size() - offset;
    if (left < 8) {
      fail(
          "{}: llama2.c tokenizer: truncated entry {} at byte offset {}: {} bytes left, need 8 for score "
          "and length",
          path, pieces.size(), entry, left);
    }
    const float score = read_f32(data, offset);
    const int32_t len = read_i32(data, offset + 4);
    if (std::isnan(score)) {
      fail("{}: llama2.c tokenizer: entry {} at byte offset {} has a NaN score", path, pieces.size(), entry);
    }
    if (len <= 0 || len > max_len) {
      fail(
          "{}: llama2.c tokenizer: entry {} at byte offset {} has piece length {}, not in 1..{} "
          "(max_token_length)",
          path, pieces.size(), entry + 4, len, max_len);
    }
    offset += 8;
    if (data.size() - offset < static_cast<size_t>(len)) {
      fail("{}: llama2.c tokenizer: truncated entry {} at byte offset {}: piece of {} bytes, only {} left", path,
           pieces.size(), entry, len, data.size() - offset);
    }
    pieces.emplace_back(data, offset, static_cast<size_t>(len));
    scores.push_back(score);
    offset += len;
  }
  if (pieces.size() <= static_cast<size_t>(kEosId)) {
    fail("{}: llama2.c tokenizer: {} pieces, need at least 3 (unk, BOS, EOS)", path, pieces.size());
  }
  return {std::move(pieces), std::move(scores)};
}

}  // namespace llm::detail
