// make_checkpoint: writes a llama2.c checkpoint (legacy, v1 fp32 or v2 Q8_0) of any shape, filled
// with deterministic pseudo-random weights, for tests and benchmarks that need a model of a given
// size without downloading one.
//
//   make_checkpoint --preset stories15M --format q80 --out /tmp/s15.bin
//   make_checkpoint --preset tinyllama --layers 2 --unshared --seed 7 --out /tmp/tiny2.bin
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

namespace {

struct Preset {
  int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len;
};

const std::map<std::string, Preset>& presets() {
  static const std::map<std::string, Preset> p = {
      {"stories260K", {64, 172, 5, 8, 4, 512, 512}},
      {"stories15M", {288, 768, 6, 6, 6, 32000, 256}},
      {"stories42M", {512, 1376, 8, 8, 8, 32000, 1024}},
      {"stories110M", {768, 2048, 12, 12, 12, 32000, 1024}},
      {"tinyllama", {2048, 5632, 22, 32, 4, 32000, 2048}},
      {"llama2-7b", {4096, 11008, 32, 32, 32, 32000, 4096}},
  };
  return p;
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// Uniform in [-1, 1): the top 24 bits of the generator, so the value is exact in fp32.
float uniform(uint64_t& state) {
  return static_cast<float>(static_cast<double>(splitmix64(state) >> 40) / 8388608.0 - 1.0);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Writes a llama2.c checkpoint with deterministic random weights."};
  std::string out;
  std::string format_name = "v1";
  std::string preset_name = "stories260K";
  std::optional<int> dim, hidden_dim, layers, heads, kv_heads, vocab, seq_len;
  bool unshared = false;
  uint64_t seed = 42;
  int group_size = 32;

  app.add_option("--out", out, "Output path")->required();
  app.add_option("--format", format_name, "Checkpoint format")
      ->check(CLI::IsMember({"legacy", "v1", "q80"}))
      ->capture_default_str();
  std::vector<std::string> preset_names;
  for (const auto& [name, _] : presets()) preset_names.push_back(name);
  app.add_option("--preset", preset_name, "Model shape")
      ->check(CLI::IsMember(preset_names))
      ->capture_default_str();
  app.add_option("--dim", dim, "Override the transformer width");
  app.add_option("--hidden-dim", hidden_dim, "Override the feed-forward width");
  app.add_option("--layers", layers, "Override the number of layers");
  app.add_option("--heads", heads,
                 "Override the number of query heads (kv heads follow unless --kv-heads is given)");
  app.add_option("--kv-heads", kv_heads, "Override the number of key/value heads");
  app.add_option("--vocab", vocab, "Override the vocabulary size");
  app.add_option("--seq-len", seq_len, "Override the context length");
  app.add_flag("--unshared", unshared, "Store a separate classifier instead of sharing the token embedding");
  app.add_option("--seed", seed, "Random seed")->capture_default_str();
  app.add_option("--group-size", group_size, "Q8_0 group size (q80 only)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const Preset& p = presets().at(preset_name);
  llm::ModelConfig config;
  config.dim = dim.value_or(p.dim);
  config.hidden_dim = hidden_dim.value_or(p.hidden_dim);
  config.n_layers = layers.value_or(p.n_layers);
  config.n_heads = heads.value_or(p.n_heads);
  // Overriding the heads alone keeps plain multi-head attention unless kv heads are given too.
  config.n_kv_heads = kv_heads.value_or(heads && !kv_heads ? *heads : p.n_kv_heads);
  config.vocab_size = vocab.value_or(p.vocab_size);
  config.max_seq_len = seq_len.value_or(p.max_seq_len);
  config.shared_classifier = !unshared;

  const llm::CheckpointFormat format = format_name == "legacy" ? llm::CheckpointFormat::LegacyF32
                                       : format_name == "v1"   ? llm::CheckpointFormat::V1F32
                                                               : llm::CheckpointFormat::V2Q8;

  // Each tensor gets its own stream derived from the seed and its name, so values do not depend on
  // the order tensors are written in (or on the format).
  auto fill = [&](const std::string& name, float* data, std::size_t count) {
    uint64_t state = seed ^ fnv1a(name);
    const bool is_norm = name.find("rms_") != std::string::npos;
    if (is_norm) {
      for (std::size_t i = 0; i < count; ++i) data[i] = 1.0f + 0.05f * uniform(state);
      return;
    }
    // Uniform[-a, a] has std a / sqrt(3). The embedding uses std 0.02 (as llama's init); the other
    // matrices std 1/sqrt(cols) so that W x keeps unit-scale activations unit-scale.
    int cols = config.dim;
    if (name.size() >= 3 && name.compare(name.size() - 3, 3, ".w2") == 0) cols = config.hidden_dim;
    const double std_dev = name == "token_embedding" ? 0.02 : 1.0 / std::sqrt(static_cast<double>(cols));
    const float a = static_cast<float>(std_dev * std::sqrt(3.0));
    for (std::size_t i = 0; i < count; ++i) data[i] = a * uniform(state);
  };

  try {
    llm::write_checkpoint(out, config, format, fill, group_size);
    auto ckpt = llm::Checkpoint::open(out);  // proves the file reads back
    std::printf(
        "wrote %s: format %s (%s%s), dim %d, hidden_dim %d, layers %d, heads %d, kv_heads %d, vocab %d, "
        "seq_len %d, %s classifier, %zu bytes (%.1f MiB), %zu bytes read per token\n",
        out.c_str(), format_name.c_str(), llm::checkpoint_format_name(ckpt->format()),
        format == llm::CheckpointFormat::V2Q8 ? (", group " + std::to_string(group_size)).c_str() : "",
        config.dim, config.hidden_dim, config.n_layers, config.n_heads, config.n_kv_heads, config.vocab_size,
        config.max_seq_len, config.shared_classifier ? "shared" : "separate",
        static_cast<std::size_t>(std::filesystem::file_size(out)),
        static_cast<double>(std::filesystem::file_size(out)) / (1024.0 * 1024.0),
        ckpt->weights().bytes_per_token());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_checkpoint: %s\n", e.what());
    return 1;
  }
  return 0;
}
