// Internal to the runtime: the two tokenizer implementations behind load_tokenizer().
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "tokenizer.h"

namespace llm::detail {

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
