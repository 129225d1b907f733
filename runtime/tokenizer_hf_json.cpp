// Hugging Face tokenizer.json files with a byte-level BPE model (Llama 3 and other GPT-2 style
// vocabularies): the vocabulary, merges by rank, added tokens (matched verbatim), and the pre-tokenizer's
// Split regex. SentencePiece-style tokenizer.json files (Metaspace, byte fallback) are refused by name:
// their tokenizer.model is the supported form.
#include <nlohmann/json.hpp>

#include "error.h"
#include "json_integer.h"
#include "tokenizer_internal.h"

namespace llm::detail {
namespace {

using nlohmann::json;

// The regex of the first Split pre-tokenizer, and whether a ByteLevel one is there (and uses its own regex).
void find_pretokenizers(const json& p, std::string& split, bool& byte_level, bool& byte_level_regex) {
  if (!p.is_object()) return;
  const std::string type = p.value("type", "");
  if (type == "Sequence") {
    for (const auto& q : p.value("pretokenizers", json::array()))
      find_pretokenizers(q, split, byte_level, byte_level_regex);
  } else if (type == "Split" && split.empty() && p.contains("pattern") && p["pattern"].contains("Regex")) {
    split = p["pattern"]["Regex"].get<std::string>();
  } else if (type == "ByteLevel") {
    byte_level = true;
    byte_level_regex = p.value("use_regex", true);
  }
}

}  // namespace

namespace {
std::unique_ptr<Tokenizer> parse_checked(const std::string& data, const std::string& path);
}

std::unique_ptr<Tokenizer> parse_hf_tokenizer_json(const std::string& data, const std::string& path) {
  try {
    return parse_checked(data, path);
  } catch (const json::exception& e) {  // a field of the wrong kind: name the file, keep JSON's own words
    fail("{}: malformed tokenizer.json: {}", path, e.what());
  }
}

namespace {

std::unique_ptr<Tokenizer> parse_checked(const std::string& data, const std::string& path) {
  json j;
  try {
    j = json::parse(data);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
    fail("{}: not a Hugging Face tokenizer.json (no 'model' object)", path);
  const json& m = j["model"];
  const std::string type = m.value("type", "?");
  if (type != "BPE") fail("{}: tokenizer model type '{}' is not supported (byte-level BPE only)", path, type);
  std::string split;
  bool byte_level = false, byte_level_regex = false;
  find_pretokenizers(j.value("pre_tokenizer", json()), split, byte_level, byte_level_regex);
  if (!byte_level)
    fail(
        "{}: a BPE tokenizer.json without a ByteLevel pre-tokenizer (SentencePiece style, e.g. Llama 2) is not "
        "supported; use its tokenizer.model",
        path);
  BpeVocabulary v;
  v.pattern = !split.empty() ? split : byte_level_regex ? kGpt2Pattern : "";
  if (v.pattern.empty()) fail("{}: the pre-tokenizer has neither a Split regex nor a ByteLevel regex", path);
  v.ignore_merges = m.value("ignore_merges", false);
  if (!m.contains("vocab") || !m["vocab"].is_object()) fail("{}: 'model.vocab' is missing or not an object", path);
  // Ids as written (json_integer.h): a wrapped or converted one would make the error blame another token.
  auto place = [&](const json& id, const std::string& text, const char* where) {
    if (!json_integer_within(id, 0, 1 << 24))
      fail("{}: {} '{}' has id {}, expected an integer from 0 to {}", path, where, text, id.dump(), 1 << 24);
    const auto i = static_cast<size_t>(id.get<int64_t>());
    if (v.tokens.size() <= i) v.tokens.resize(i + 1);
    v.tokens[i] = text;
    return static_cast<int>(i);
  };
  for (const auto& [text, id] : m["vocab"].items()) place(id, text, "vocab entry");
  for (const auto& merge : m.value("merges", json::array())) {
    if (merge.is_string())
      v.merges.push_back(merge.get<std::string>());
    else if (merge.is_array() && merge.size() == 2)
      v.merges.push_back(merge[0].get<std::string>() + " " + merge[1].get<std::string>());
    else
      fail("{}: a merge is neither \"a b\" nor [\"a\", \"b\"]: {}", path, merge.dump());
  }
  for (const auto& added : j.value("added_tokens", json::array()))
    v.literal.push_back(place(added.at("id"), added.at("content").get<std::string>(), "added token"));
  for (size_t id = 0; id < v.tokens.size(); ++id)
    if (v.tokens[id].empty()) fail("{}: token id {} has no entry (ids must be dense)", path, id);
  guess_bos_eos(v);
  return make_byte_level_bpe(v, path);
}

}  // namespace
}  // namespace llm::detail
