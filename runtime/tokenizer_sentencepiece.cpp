// SentencePiece `.model` files, through libsentencepiece.

#include <sentencepiece_processor.h>

#include <cstdint>
#include <string_view>
#include <utility>

#include "error.h"
#include "log.h"
#include "tokenizer_internal.h"

namespace llm::detail {
namespace {

constexpr std::string_view kWordMarker = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

// Minimal protobuf reading, enough to get TrainerSpec.bos_id (41) and eos_id (42) out of a
// serialized ModelProto (TrainerSpec is field 2) without the generated sentencepiece_model.pb.h,
// which the system package does not install.
struct ProtoReader {
  std::string_view data;
  size_t pos = 0;

  bool varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64 && pos < data.size(); shift += 7) {
      auto b = static_cast<unsigned char>(data[pos++]);
      *v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (b < 0x80) return true;
    }
    return false;
  }
  // Calls fn(field, wire_type, varint_value, bytes) per field; false on malformed input.
  template <typename Fn>
  bool each_field(Fn fn) {
    while (pos < data.size()) {
      uint64_t key, v = 0;
      if (!varint(&key)) return false;
      std::string_view bytes;
      switch (key & 7) {
        case 0:
          if (!varint(&v)) return false;
          break;
        case 1:
        case 5: {
          size_t n = (key & 7) == 1 ? 8 : 4;
          if (data.size() - pos < n) return false;
          pos += n;
          break;
        }
        case 2:
          if (!varint(&v) || data.size() - pos < v) return false;
          bytes = data.substr(pos, v);
          pos += v;
          break;
        default: return false;
      }
      fn(key >> 3, key & 7, v, bytes);
    }
    return true;
  }
};

// TrainerSpec's bos_id and eos_id (proto defaults 1 and 2).
std::pair<int, int> trainer_spec_bos_eos(std::string_view model) {
  int bos = 1, eos = 2;
  ProtoReader top{model};
  top.each_field([&](uint64_t field, uint64_t wire, uint64_t, std::string_view bytes) {
    if (field != 2 || wire != 2) return;
    ProtoReader spec{bytes};
    spec.each_field([&](uint64_t f, uint64_t w, uint64_t v, std::string_view) {
      if (w == 0 && f == 41) bos = static_cast<int32_t>(static_cast<uint32_t>(v));
      if (w == 0 && f == 42) eos = static_cast<int32_t>(static_cast<uint32_t>(v));
    });
  });
  return {bos, eos};
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> spp, std::string path,
                         std::string_view serialized)
      : spp_(std::move(spp)), path_(std::move(path)) {
    bos_id_ = spp_->bos_id();
    eos_id_ = spp_->eos_id();
    if (bos_id_ < 0 || eos_id_ < 0) {
      // libsentencepiece finds BOS/EOS by the trainer's piece names ("<s>", "</s>"). Models
      // converted from llama2.c files name them "\n<s>\n" and "\n</s>\n", so fall back to the
      // trainer's ids when those are control pieces.
      auto [bos, eos] = trainer_spec_bos_eos(serialized);
      auto control = [&](int id) { return id >= 0 && id < spp_->GetPieceSize() && spp_->IsControl(id); };
      if (bos_id_ < 0 && control(bos)) bos_id_ = bos;
      if (eos_id_ < 0 && control(eos)) eos_id_ = eos;
      log().debug("{}: no '<s>'/'</s>' pieces; BOS = {}, EOS = {} from the trainer spec", path_, bos_id_, eos_id_);
    }
  }

  std::vector<int> encode(std::string_view text, bool add_bos) const override {
    std::vector<int> ids;
    auto status = spp_->Encode(text, &ids);
    if (!status.ok()) fail("{}: SentencePiece could not encode the text: {}", path_, status.ToString());
    if (add_bos) {
      if (bos_id_ < 0) fail("{}: the SentencePiece model has no BOS token", path_);
      ids.insert(ids.begin(), bos_id_);
    }
    return ids;
  }

  std::string decode_piece(int prev_token, int token) const override {
    if (token < 0 || token >= vocab_size()) {
      fail("token id {} is out of range for the SentencePiece vocabulary of {} pieces in {}", token, vocab_size(),
           path_);
    }
    if (spp_->IsControl(token)) return "";  // BOS, EOS, padding
    const std::string& piece = spp_->IdToPiece(token);
    if (int b = byte_piece_value(piece); b >= 0) {  // IsByte pieces, and any other "<0xAB>"
      return std::string(1, static_cast<char>(b));
    }
    std::string out;
    out.reserve(piece.size());
    for (size_t i = 0; i < piece.size();) {
      if (std::string_view(piece).substr(i, kWordMarker.size()) == kWordMarker) {
        out += ' ';
        i += kWordMarker.size();
      } else {
        out += piece[i++];
      }
    }
    if (prev_token == bos_id_ && prev_token >= 0 && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

  int vocab_size() const override { return spp_->GetPieceSize(); }
  int bos_id() const override { return bos_id_; }
  int eos_id() const override { return eos_id_; }
  std::string kind() const override { return "sentencepiece"; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> spp_;
  std::string path_;
  int bos_id_, eos_id_;  // -1 when the model has none
};

}  // namespace

std::unique_ptr<Tokenizer> parse_sentencepiece_tokenizer(const std::string& data, const std::string& path) {
  auto spp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto status = spp->LoadFromSerializedProto(data);
  if (!status.ok()) {
    std::string why = status.ToString();
    if (why.find("ParseFromArray") != std::string::npos) why = "not a serialized ModelProto (protobuf parse failed)";
    while (!why.empty() && why.back() == ' ') why.pop_back();
    fail("{}: SentencePiece: {}", path, why);
  }
  if (spp->GetPieceSize() <= 0) fail("{}: SentencePiece: the model has no pieces", path);
  return std::make_unique<SentencePieceTokenizer>(std::move(spp), path, data);
}

}  // namespace llm::detail
