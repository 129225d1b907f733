// Byte-level BPE (GPT-2 style, as Llama 3 uses it), from a Hugging Face tokenizer.json or a GGUF `gpt2`
// vocabulary: special tokens are split out first (matched literally), the rest is cut by the
// pre-tokenizer's regex (PCRE2 with Unicode properties, the pattern taken from the file), each piece's UTF-8
// bytes are mapped to GPT-2's printable characters, and merges are applied lowest rank first.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <unordered_map>

#include "error.h"
#include "tokenizer_internal.h"

namespace llm::detail {

const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

void guess_bos_eos(BpeVocabulary& v) {
  auto find = [&](std::initializer_list<const char*> names) {
    for (const char* n : names)
      for (int id : v.literal)
        if (v.tokens[id] == n) return id;
    return -1;
  };
  if (v.bos < 0) v.bos = find({"<|begin_of_text|>", "<s>", "<|startoftext|>"});
  if (v.eos < 0) v.eos = find({"<|end_of_text|>", "</s>", "<|endoftext|>", "<|eot_id|>"});
}

namespace {

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for U+0100 onwards.
std::array<std::string, 256> byte_to_utf8() {
  std::array<std::string, 256> out;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const int cp = printable ? b : 256 + n++;
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    out[b] = s;
  }
  return out;
}

size_t utf8_len(unsigned char lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

class ByteLevelBpe final : public Tokenizer {
 public:
  ByteLevelBpe(const BpeVocabulary& v, const std::string& path)
      : tokens_(v.tokens), bos_(v.bos), eos_(v.eos), ignore_merges_(v.ignore_merges) {
    const auto table = byte_to_utf8();
    for (int b = 0; b < 256; ++b) char_to_byte_[table[b]] = static_cast<unsigned char>(b), byte_chars_[b] = table[b];
    for (size_t id = 0; id < tokens_.size(); ++id) ids_.emplace(tokens_[id], static_cast<int>(id));
    for (size_t r = 0; r < v.merges.size(); ++r) ranks_.emplace(v.merges[r], static_cast<int>(r));
    literal_.assign(tokens_.size(), false);
    for (int id : v.literal) {
      if (id < 0 || static_cast<size_t>(id) >= tokens_.size() || tokens_[id].empty())
        fail("{}: added token id {} has no text", path, id);
      literal_ids_.emplace(tokens_[id], id);
      literal_[id] = true;
    }
    int err = 0;
    PCRE2_SIZE at = 0;
    regex_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(v.pattern.c_str()), v.pattern.size(), PCRE2_UTF | PCRE2_UCP,
                               &err, &at, nullptr));
    if (!regex_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("{}: the pre-tokenizer regex does not compile at offset {}: {}", path, at, reinterpret_cast<char*>(msg));
    }
  }

  std::vector<int> encode(std::string_view text, bool add_bos) const override {
    std::vector<int> out;
    if (add_bos && bos_ >= 0) out.push_back(bos_);
    // Added tokens are whole tokens wherever they stand; the text between them is split and merged.
    size_t start = 0;
    while (start < text.size()) {
      size_t best = std::string_view::npos, best_len = 0;
      int best_id = -1;
      for (const auto& [s, id] : literal_ids_) {
        const size_t at = text.find(s, start);
        if (at != std::string_view::npos && (at < best || (at == best && s.size() > best_len)))
          best = at, best_len = s.size(), best_id = id;
      }
      encode_ordinary(text.substr(start, best == std::string_view::npos ? std::string_view::npos : best - start), out);
      if (best == std::string_view::npos) break;
      out.push_back(best_id);
      start = best + best_len;
    }
    return out;
  }

  std::string decode_piece(int, int token) const override {
    if (token < 0 || token >= vocab_size())
      fail("token id {} is out of range for a vocabulary of {} tokens", token, vocab_size());
    if (literal_[token]) return token == bos_ || token == eos_ ? "" : tokens_[token];
    std::string bytes;
    const std::string& t = tokens_[token];
    for (size_t i = 0; i < t.size();) {
      const size_t n = utf8_len(static_cast<unsigned char>(t[i]));
      auto it = char_to_byte_.find(t.substr(i, n));
      bytes += it != char_to_byte_.end() ? static_cast<char>(it->second) : '?';
      i += n;
    }
    return bytes;
  }

  int vocab_size() const override { return static_cast<int>(tokens_.size()); }
  int bos_id() const override { return bos_; }
  int eos_id() const override { return eos_; }
  std::string kind() const override { return "byte-level BPE"; }

 private:
  struct RegexFree {
    void operator()(pcre2_code* c) const { pcre2_code_free(c); }
  };

  void encode_ordinary(std::string_view text, std::vector<int>& out) const {
    if (text.empty()) return;
    std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> md(
        pcre2_match_data_create_from_pattern(regex_.get(), nullptr), &pcre2_match_data_free);
    size_t pos = 0;
    while (pos < text.size()) {
      const int rc =
          pcre2_match(regex_.get(), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos, 0, md.get(), nullptr);
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      if (rc < 0 || ov[1] <= pos) {  // no match (or an empty one): the rest is one piece
        merge_piece(text.substr(pos), out);
        return;
      }
      if (ov[0] > pos) merge_piece(text.substr(pos, ov[0] - pos), out);
      merge_piece(text.substr(ov[0], ov[1] - ov[0]), out);
      pos = ov[1];
    }
  }

  // One pre-token: bytes to GPT-2 characters, then merges by rank until none applies.
  void merge_piece(std::string_view piece, std::vector<int>& out) const {
    std::vector<std::string> parts;
    for (unsigned char b : piece) parts.push_back(byte_chars_[b]);
    if (ignore_merges_) {
      std::string whole;
      for (const auto& p : parts) whole += p;
      if (auto it = ids_.find(whole); it != ids_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    while (parts.size() > 1) {
      int best_rank = -1;
      size_t best = 0;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        auto it = ranks_.find(parts[i] + " " + parts[i + 1]);
        if (it != ranks_.end() && (best_rank < 0 || it->second < best_rank)) best_rank = it->second, best = i;
      }
      if (best_rank < 0) break;
      parts[best] += parts[best + 1];
      parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    }
    for (const auto& p : parts) {
      auto it = ids_.find(p);
      if (it != ids_.end()) {
        out.push_back(it->second);
        continue;
      }
      // A part with no id of its own (a vocabulary without every byte): its bytes one by one, if they have ids.
      for (size_t i = 0; i < p.size();) {
        const size_t n = utf8_len(static_cast<unsigned char>(p[i]));
        auto b = ids_.find(p.substr(i, n));
        if (b == ids_.end()) fail("byte-level BPE: the vocabulary has no token for '{}'", p.substr(i, n));
        out.push_back(b->second);
        i += n;
      }
    }
  }

  std::vector<std::string> tokens_;
  int bos_, eos_;
  std::unordered_map<std::string, int> ids_, ranks_;
  std::map<std::string, int> literal_ids_;  // added tokens by their text, matched verbatim
  std::vector<bool> literal_;               // per id: an added token (decoded verbatim)
  bool ignore_merges_;
  std::unordered_map<std::string, unsigned char> char_to_byte_;
  std::array<std::string, 256> byte_chars_;
  std::unique_ptr<pcre2_code, RegexFree> regex_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_level_bpe(const BpeVocabulary& vocabulary, const std::string& path) {
  return std::make_unique<ByteLevelBpe>(vocabulary, path);
}

}  // namespace llm::detail
