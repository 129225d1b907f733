// Tokenizers: SentencePiece `.model` files (through libsentencepiece) and the llama2.c
// `tokenizer.bin` format, told apart by content.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace llm {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids for `text`, with BOS first when `add_bos`. Never adds EOS.
  virtual std::vector<int> encode(std::string_view text, bool add_bos) const = 0;

  // The raw bytes that `token` stands for when it follows `prev_token`: byte tokens (<0xAB>) give
  // their byte, the SentencePiece word marker becomes a space, and the leading space of the first
  // piece after BOS is dropped. Bytes may be an incomplete UTF-8 sequence; see Utf8StreamDecoder.
  virtual std::string decode_piece(int prev_token, int token) const = 0;

  virtual int vocab_size() const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
  virtual std::string kind() const = 0;  // "sentencepiece" or "llama2c"
};

// Opens `path` as a SentencePiece model or a llama2.c tokenizer.bin, deciding by content. Throws
// llm::Error naming the file when it is neither, truncated or corrupt.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// Turns a stream of byte chunks into complete UTF-8 text: a multi-byte character split across
// tokens is emitted once, whole, when its last byte arrives. Invalid bytes become U+FFFD.
class Utf8StreamDecoder {
 public:
  // Appends `bytes`; returns the text that is now complete.
  std::string push(std::string_view bytes);
  // Returns whatever is left (an incomplete tail becomes U+FFFD) and resets.
  std::string flush();

 private:
  std::string pending_;
};

}  // namespace llm
