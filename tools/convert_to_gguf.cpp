// convert_to_gguf: a llama2.c checkpoint and its tokenizer.bin as one GGUF (version 3, `llama`
// architecture) file, weights as F32, F16, BF16 or Q8_0, the vocabulary in the file.
//   convert_to_gguf --model stories260K.bin --tokenizer tok512.bin --type q8_0 --out stories260K.gguf
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "checkpoint.h"
#include "error.h"
#include "gguf_writer.h"
#include "tokenizer_internal.h"

int main(int argc, char** argv) {
  CLI::App app{"convert_to_gguf: a llama2.c checkpoint and tokenizer.bin as a GGUF file"};
  std::string model, tokenizer, out, type = "f32";
  app.add_option("--model", model, "llama2.c checkpoint")->required()->check(CLI::ExistingFile);
  app.add_option("--tokenizer", tokenizer, "llama2.c tokenizer.bin")->required()->check(CLI::ExistingFile);
  app.add_option("--out", out, "GGUF file to write")->required();
  app.add_option("--type", type, "weight type: f32, f16, bf16 or q8_0")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const auto ckpt = llm::Checkpoint::open(model);
    std::ifstream in(tokenizer, std::ios::binary);
    const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto voc = llm::detail::parse_llama2c_vocabulary(data, tokenizer);
    const llm::gguf::TensorType t = type == "f16"    ? llm::gguf::TensorType::F16
                                    : type == "bf16" ? llm::gguf::TensorType::BF16
                                    : type == "q8_0" ? llm::gguf::TensorType::Q8_0
                                                     : llm::gguf::TensorType::F32;
    llm::gguf::llama_gguf(*ckpt, voc.pieces, voc.scores, t).write(out);
    std::printf("wrote %s (%s weights, %zu-piece vocabulary)\n", out.c_str(), type.c_str(), voc.pieces.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "convert_to_gguf: %s\n", e.what());
    return 1;
  }
  return 0;
}
