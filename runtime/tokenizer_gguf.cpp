// The tokenizer inside a GGUF file. The `llama` vocabulary (tokenizer.ggml.model = "llama") is
// SentencePiece's: pieces with U+2581 for spaces, byte pieces "<0xAB>", merge scores; it runs on the same
// score-ordered merges as llama2.c's tokenizer.bin. The byte-level BPE `gpt2` vocabulary (Llama 3) runs
// on tokenizer_bpe.cpp.
#include <string>
#include <vector>

#include "error.h"
#include "gguf.h"
#include "tokenizer_internal.h"

namespace llm::detail {

namespace {

// GGUF's byte-level BPE: tokens, merges by rank, token types (3 control and 4 user-defined are matched
// verbatim), BOS/EOS ids, and tokenizer.ggml.pre naming the pre-tokenizer ("llama-bpe": Llama 3's regex).
std::unique_ptr<Tokenizer> gpt2_tokenizer(const gguf::File& f, const gguf::Value& tokens, const std::string& path) {
  BpeVocabulary v;
  for (const auto& t : tokens.array) v.tokens.push_back(t.s);
  const gguf::Value* merges = f.find("tokenizer.ggml.merges");
  if (!merges || merges->type != gguf::ValueType::Array || merges->elem != gguf::ValueType::String)
    fail("{}: GGUF 'tokenizer.ggml.merges' is missing or not an array of strings (a gpt2 vocabulary needs it)", path);
  for (const auto& m : merges->array) v.merges.push_back(m.s);
  if (const gguf::Value* types = f.find("tokenizer.ggml.token_type"); types && types->type == gguf::ValueType::Array)
    for (size_t i = 0; i < types->array.size() && i < v.tokens.size(); ++i)
      if (types->array[i].integer() == 3 || types->array[i].integer() == 4) v.literal.push_back(static_cast<int>(i));
  for (auto [key, out] : {std::pair{"tokenizer.ggml.bos_token_id", &v.bos}, {"tokenizer.ggml.eos_token_id", &v.eos}})
    if (const gguf::Value* id = f.find(key); id && id->is_integer()) *out = static_cast<int>(id->integer());
  guess_bos_eos(v);
  const gguf::Value* pre = f.find("tokenizer.ggml.pre");
  const std::string pre_name = pre && pre->type == gguf::ValueType::String ? pre->s : "default";
  if (pre_name == "llama-bpe" || pre_name == "llama3")
    v.pattern = kLlama3Pattern;
  else if (pre_name == "default" || pre_name == "gpt-2")
    v.pattern = kGpt2Pattern;
  else
    fail("{}: GGUF pre-tokenizer '{}' (tokenizer.ggml.pre) is not supported (llama-bpe, gpt-2, default)", path,
         pre_name);
  return make_byte_level_bpe(v, path);
}

}  // namespace

std::unique_ptr<Tokenizer> gguf_tokenizer(const uint8_t* data, std::size_t size, const std::string& path) {
  const gguf::File f = gguf::parse(data, size, path);
  const gguf::Value* model = f.find("tokenizer.ggml.model");
  if (!model || model->type != gguf::ValueType::String)
    fail("{}: GGUF has no tokenizer (string 'tokenizer.ggml.model' is missing); give one with model.tokenizer", path);
  if (model->s != "llama" && model->s != "gpt2")
    fail(
        "{}: GGUF tokenizer model '{}' is not supported; this runtime reads 'llama' (SentencePiece-style) and "
        "'gpt2' (byte-level BPE) vocabularies",
        path, model->s);
  const gguf::Value* tokens = f.find("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != gguf::ValueType::Array || tokens->elem != gguf::ValueType::String)
    fail("{}: GGUF 'tokenizer.ggml.tokens' is missing or not an array of strings", path);
  if (model->s == "gpt2") return gpt2_tokenizer(f, *tokens, path);
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
