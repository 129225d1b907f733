// Internal to the runtime: the two tokenizer implementations behind load_tokenizer().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer.h"

namespace llm::detail {

// A SentencePiece-style vocabulary as llama2.c stores it: pieces (spaces as ' ', bytes as "<0xAB>") and
// merge scores; ids 0, 1, 2 are unk, BOS and EOS.
struct Vocabulary {
  std::vector<std::string> pieces;
  std::vector<float> scores;
};

// The llama2.c tokenizer (score-ordered merges) over a vocabulary of at least 3 pieces.
std::unique_ptr<Tokenizer> make_llama2c_tokenizer(std::vector<std::string> pieces, std::vector<float> scores);

// The vocabulary of a llama2.c tokenizer.bin (`data`: the whole file); same errors as below.
Vocabulary parse_llama2c_vocabulary(const std::string& data, const std::string& path);

// The tokenizer a GGUF file carries (tokenizer.ggml.*): the SentencePiece-style `llama` vocabulary.
// Throws llm::Error naming the file and the key for anything else or anything missing.
std::unique_ptr<Tokenizer> gguf_tokenizer(const uint8_t* data, std::size_t size, const std::string& path);

// A byte-level BPE vocabulary (GPT-2 / Llama 3 style).
struct BpeVocabulary {
  std::vector<std::string> tokens;  // by id: GPT-2 byte characters, or literal text for added tokens
  std::vector<std::string> merges;  // "left right", by rank (first merges first)
  std::vector<int> literal;         // added tokens: matched verbatim in text, decoded verbatim
  int bos = -1, eos = -1;
  bool ignore_merges = false;  // a piece that is itself a token is not merged (Llama 3's tokenizer.json)
  std::string pattern;         // the pre-tokenizer's regex (PCRE2 syntax)
};

// GPT-2's pre-tokenizer regex (ByteLevel with use_regex) and Llama 3's.
extern const char* const kGpt2Pattern;
extern const char* const kLlama3Pattern;

// A byte-level BPE tokenizer; throws llm::Error naming `path` when the pattern does not compile.
std::unique_ptr<Tokenizer> make_byte_level_bpe(const BpeVocabulary& vocabulary, const std::string& path);

// A Hugging Face tokenizer.json with a byte-level BPE model; throws llm::Error naming `path` and the
// field for anything else (a SentencePiece-style tokenizer.json: use tokenizer.model).
std::unique_ptr<Tokenizer> parse_hf_tokenizer_json(const std::string& data, const std::string& path);

// BOS and EOS among `tokens` by their usual names (<|begin_of_text|>, <s>; <|end_of_text|>, </s>, ...).
void guess_bos_eos(BpeVocabulary& v);

// Parses `data` (the whole file) as a llama2.c tokenizer.bin. Throws llm::Error naming `path` and
// the byte offset when the content is truncated or impossible.
std::unique_ptr<Tokenizer> parse_llama2c_tokenizer(const std::string& data, const std::string& path);

// Loads `data` (the whole file) as a serialized SentencePiece ModelProto. Throws llm::Error naming
// `path` when libsentencepiece rejects it.
std::unique_ptr<Tokenizer> parse_sentencepiece_tokenizer(const std::string& data, const std::string& path);

// The byte a "<0xAB>" piece stands for, or -1 when `piece` is not a byte piece (both formats spell
// byte tokens this way).
int byte_piece_value(std::string_view piece);

}  // namespace llm::detail
