#include "random_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <thread>

#include "error.h"
#include "thread_pool.h"

namespace llm {
namespace {

const std::map<std::string, ModelConfig>& presets() {
  // The published models' classifiers: llama2.c's stories models and MobileLLM (share_embedding) use the
  // token embedding; TinyLlama and Llama 2 have a separate lm_head (tie_word_embeddings false), which the
  // issue's floors count. MobileLLM's widths (960-1,600, 64-wide heads, GQA 3-5, the Llama 2 vocabulary)
  // fill the span between stories110M's 768 and TinyLlama's 2,048.
  auto shape = [](int dim, int hidden, int layers, int heads, int kv_heads, int vocab, int seq, bool shared) {
    ModelConfig c;
    c.dim = dim, c.hidden_dim = hidden, c.n_layers = layers, c.n_heads = heads, c.n_kv_heads = kv_heads;
    c.vocab_size = vocab, c.max_seq_len = seq, c.shared_classifier = shared;
    return c;
  };
  static const std::map<std::string, ModelConfig> p = {
      {"stories260K", shape(64, 172, 5, 8, 4, 512, 512, true)},
      {"stories15M", shape(288, 768, 6, 6, 6, 32000, 256, true)},
      {"stories42M", shape(512, 1376, 8, 8, 8, 32000, 1024, true)},
      {"stories110M", shape(768, 2048, 12, 12, 12, 32000, 1024, true)},
      {"tinyllama", shape(2048, 5632, 22, 32, 4, 32000, 2048, false)},
      {"llama2-7b", shape(4096, 11008, 32, 32, 32, 32000, 4096, false)},
      {"llama2-70b", shape(8192, 28672, 80, 64, 8, 32000, 4096, false)},
      {"mobilellm-350m", shape(960, 2560, 32, 15, 5, 32000, 2048, true)},
      {"mobilellm-600m", shape(1152, 3072, 40, 18, 6, 32000, 2048, true)},
      {"mobilellm-1b", shape(1280, 3584, 54, 20, 5, 32000, 2048, true)},
      {"mobilellm-1.5b", shape(1600, 4352, 54, 25, 5, 32000, 2048, true)},
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

// data[i] = offset + scale * (the i-th uniform of the generator seeded with `state`). splitmix64 steps its
// state by a constant, so value i can be drawn without the ones before it: the threads each take a range
// and the result is the same as one sequential pass.
void fill_uniform(ThreadPool& pool, uint64_t state, float offset, float scale, float* data, std::size_t count) {
  pool.parallel_for(static_cast<int64_t>(count), int64_t{1} << 20, [&](int64_t begin, int64_t end) {
    uint64_t s = state + static_cast<uint64_t>(begin) * 0x9e3779b97f4a7c15ULL;
    for (int64_t i = begin; i < end; ++i) data[i] = offset + scale * uniform(s);
  });
}

}  // namespace

ModelConfig model_preset(const std::string& name) {
  auto it = presets().find(name);
  if (it == presets().end()) {
    std::string names;
    for (const auto& n : model_preset_names()) names += (names.empty() ? "" : ", ") + n;
    fail("unknown model preset '{}' (expected one of: {})", name, names);
  }
  return it->second;
}

std::vector<std::string> model_preset_names() {
  std::vector<std::string> names;
  for (const auto& [name, _] : presets()) names.push_back(name);
  return names;
}

TensorFiller random_weights(const ModelConfig& config, uint64_t seed) {
  auto pool = std::make_shared<ThreadPool>(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  return [config, seed, pool](const std::string& name, float* data, std::size_t count) {
    const uint64_t state = seed ^ fnv1a(name);
    if (name.find("rms_") != std::string::npos) return fill_uniform(*pool, state, 1.0f, 0.05f, data, count);
    // Uniform[-a, a] has std a / sqrt(3).
    int cols = config.dim;
    if (name.size() >= 3 && name.compare(name.size() - 3, 3, ".w2") == 0) cols = config.hidden_dim;
    const double std_dev = name == "token_embedding" ? 0.02 : 1.0 / std::sqrt(static_cast<double>(cols));
    fill_uniform(*pool, state, 0.0f, static_cast<float>(std_dev * std::sqrt(3.0)), data, count);
  };
}

}  // namespace llm
