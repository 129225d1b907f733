// make_checkpoint: writes a llama2.c checkpoint (legacy, v1 fp32 or v2 Q8_0) of any shape, filled
// with deterministic pseudo-random weights, for tests and benchmarks that need a model of a given
// size without downloading one.
//
//   make_checkpoint --preset stories15M --format q80 --out /tmp/s15.bin
//   make_checkpoint --preset tinyllama --layers 2 --shared --seed 7 --out /tmp/tiny2.bin
// The classifier is the preset's (separate for tinyllama and llama2-*) unless --shared or --unshared says.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint.h"
#include "error.h"
#include "random_checkpoint.h"

int main(int argc, char** argv) {
  CLI::App app{"Writes a llama2.c checkpoint with deterministic random weights."};
  std::string out;
  std::string format_name = "v1";
  std::string preset_name = "stories260K";
  std::optional<int> dim, hidden_dim, layers, heads, kv_heads, vocab, seq_len;
  bool unshared = false, shared = false;
  uint64_t seed = 42;
  int group_size = 32;

  app.add_option("--out", out, "Output path")->required();
  app.add_option("--format", format_name, "Checkpoint format")
      ->check(CLI::IsMember({"legacy", "v1", "q80"}))
      ->capture_default_str();
  app.add_option("--preset", preset_name, "Model shape")
      ->check(CLI::IsMember(llm::model_preset_names()))
      ->capture_default_str();
  app.add_option("--dim", dim, "Override the transformer width");
  app.add_option("--hidden-dim", hidden_dim, "Override the feed-forward width");
  app.add_option("--layers", layers, "Override the number of layers");
  app.add_option("--heads", heads, "Override the number of query heads (kv heads follow unless --kv-heads is given)");
  app.add_option("--kv-heads", kv_heads, "Override the number of key/value heads");
  app.add_option("--vocab", vocab, "Override the vocabulary size");
  app.add_option("--seq-len", seq_len, "Override the context length");
  auto* separate_flag =
      app.add_flag("--unshared", unshared, "Store a separate classifier (default: as the preset's model does)");
  app.add_flag("--shared", shared, "Share the token embedding as the classifier (default: as the preset's model does)")
      ->excludes(separate_flag);
  app.add_option("--seed", seed, "Random seed")->capture_default_str();
  app.add_option("--group-size", group_size, "Q8_0 group size (q80 only)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const llm::ModelConfig p = llm::model_preset(preset_name);
  llm::ModelConfig config;
  config.dim = dim.value_or(p.dim);
  config.hidden_dim = hidden_dim.value_or(p.hidden_dim);
  config.n_layers = layers.value_or(p.n_layers);
  config.n_heads = heads.value_or(p.n_heads);
  // Overriding the heads alone keeps plain multi-head attention unless kv heads are given too.
  config.n_kv_heads = kv_heads.value_or(heads && !kv_heads ? *heads : p.n_kv_heads);
  config.vocab_size = vocab.value_or(p.vocab_size);
  config.max_seq_len = seq_len.value_or(p.max_seq_len);
  config.shared_classifier = shared || (p.shared_classifier && !unshared);

  const llm::CheckpointFormat format = format_name == "legacy" ? llm::CheckpointFormat::LegacyF32
                                       : format_name == "v1"   ? llm::CheckpointFormat::V1F32
                                                               : llm::CheckpointFormat::V2Q8;

  const llm::TensorFiller fill = llm::random_weights(config, seed);

  try {
    llm::write_checkpoint(out, config, format, fill, group_size);
    auto ckpt = llm::Checkpoint::open(out);  // proves the file reads back
    std::printf(
        "wrote %s: format %s (%s%s), dim %d, hidden_dim %d, layers %d, heads %d, kv_heads %d, vocab %d, "
        "seq_len %d, %s classifier, %zu bytes (%.1f MiB), %zu bytes read per token\n",
        out.c_str(), format_name.c_str(), llm::checkpoint_format_name(ckpt->format()),
        format == llm::CheckpointFormat::V2Q8 ? (", group " + std::to_string(group_size)).c_str() : "", config.dim,
        config.hidden_dim, config.n_layers, config.n_heads, config.n_kv_heads, config.vocab_size, config.max_seq_len,
        config.shared_classifier ? "shared" : "separate", static_cast<std::size_t>(std::filesystem::file_size(out)),
        static_cast<double>(std::filesystem::file_size(out)) / (1024.0 * 1024.0), ckpt->weights().bytes_per_token());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_checkpoint: %s\n", e.what());
    return 1;
  }
  return 0;
}
