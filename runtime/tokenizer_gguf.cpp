// The tokenizer inside a GGUF file. The `llama` vocabulary (tokenizer.ggml.model = "llama") is
// SentencePiece's: pieces with U+2581 for spaces, byte pieces "<0xAB>", merge scores; it runs on the same
// score-ordered merges as llama2.c's tokenizer.bin. The byte-level BPE `gpt2` vocabulary is refused with
// a message until it is supported.
#include <string>
#include <vector>

#include "error.h"
#include "gguf.h"
#include "tokenizer_internal.h"

namespace llm::detail {

std::unique_ptr<Tokenizer> gguf_tokenizer(const uint8_t* data, std::size_t size, const std::string& path) {
  const gguf::File f = gguf::parse(data, size, path);
  const gguf::Value* model = f.find("tokenizer.ggml.model");
  if (!model || model->type != gguf::ValueType::String)
    fail("{}: GGUF has no tokenizer (string 'tokenizer.ggml.model' is missing); give one with model.tokenizer", path);
  if (model->s != "llama")
    fail(
        "{}: GGUF tokenizer model '{}' is not supported; this runtime reads the SentencePiece-style 'llama' "
        "vocabulary",
        path, model->s);
  const gguf::Value* tokens = f.find("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != gguf::ValueType::Array || tokens->elem != gguf::ValueType::String)
    fail("{}: GGUF 'tokenizer.ggml.tokens' is missing or not an array of strings", path);
  const gguf::Value* scores = f.find("tokenizer.ggml.scores");
  if (scores && (scores->type != gguf::ValueType::Array || scores->elem != gguf::ValueType::F32 ||
                 scores->array.size() != tokens->array.size()))
    fail("{}: GGUF 'tokenizer.ggml.scores' must be an array of {} f32 values", path, tokens->array.size());
  // The runtime's SentencePiece-style tokenizer fixes unk, BOS and EOS at 0, 1, 2, as Llama's vocabulary has them.
  for (auto [key, want] : {std::pair{"tokenizer.ggml.unknown_token_id", 0},
                           {"tokenizer.ggml.bos_token_id", 1},
                           {"tokenizer.ggml.eos_token_id", 2}}) {
    const gguf::Value* v = f.find(key);
    if (v && v->is_integer() && v->integer() != want)
      fail("{}: GGUF '{}' is {}, but this runtime's llama tokenizer needs {}", path, key, v->integer(), want);
  }
  Vocabulary voc;
  for (size_t i = 0; i < tokens->array.size(); ++i) {
    std::string piece = tokens->array[i].s;
    for (size_t at; (at = piece.find("\xE2\x96\x81")) != std::string::npos;) piece.replace(at, 3, " ");  // U+2581
    voc.pieces.push_back(std::move(piece));
    voc.scores.push_back(scores ? static_cast<float>(scores->array[i].f) : 0.0f);
  }
  if (voc.pieces.size() < 3) fail("{}: GGUF vocabulary has {} pieces, need at least 3", path, voc.pieces.size());
  return make_llama2c_tokenizer(std::move(voc.pieces), std::move(voc.scores));
}

}  // namespace llm::detail
