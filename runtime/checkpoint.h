// Checkpoints: llama2.c's legacy (version 0) fp32, version 1 fp32 and version 2 int8 (Q8_0), and GGUF
// files of the `llama` architecture (checkpoint_gguf.cpp), told apart by content; a directory is a
// Hugging Face Llama model (config.json and safetensors, checkpoint_hf.cpp).
// Opening validates before it touches any weight: magic, version, dimensions that fit together, and
// the file size against what the header implies. Every failure is an llm::Error naming the file and
// the mismatch.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mapped_file.h"
#include "model_config.h"
#include "weights.h"

namespace llm {

enum class CheckpointFormat { LegacyF32, V1F32, V2Q8, Gguf, HfSafetensors };

const char* checkpoint_format_name(CheckpointFormat format);

class Checkpoint {
 public:
  // Memory-maps (or, with LoadMode::Memory, reads) and validates `path`. Throws llm::Error on any problem.
  static std::unique_ptr<Checkpoint> open(const std::string& path, LoadMode mode = LoadMode::Mmap);

  const std::string& path() const { return path_; }
  CheckpointFormat format() const { return format_; }
  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  // Token ids that end generation by the model's own files (Hugging Face generation_config.json or
  // config.json eos_token_id, one or a list); empty when the file says nothing (the tokenizer's EOS applies).
  const std::vector<int>& eos_ids() const { return eos_ids_; }

 private:
  Checkpoint() = default;
  void load_gguf();  // fills config_ and weights_ from the GGUF in file_ (checkpoint_gguf.cpp)
  void load_hf();    // ... from the Hugging Face directory path_ (checkpoint_hf.cpp)
  void load_hf_checked();
  std::string path_;
  CheckpointFormat format_ = CheckpointFormat::LegacyF32;
  ModelConfig config_;
  ModelWeights weights_;
  MappedFile file_;
  std::vector<std::vector<float>> owned_;     // tensors converted at load (see checkpoint.cpp)
  std::vector<std::vector<int8_t>> owned_q_;  // GGUF Q8_0 values, regrouped at load
  std::vector<MappedFile> shards_;            // a Hugging Face model's safetensors files
  std::vector<int> eos_ids_;
};

// Checks a model shape for what the forward pass needs (positive, bounded dimensions that divide); throws
// llm::Error prefixed with `where`.
void validate_model_config(const std::string& where, const ModelConfig& config);

// Fills `count` fp32 values of the tensor called `name` (e.g. "layers.3.wq", "token_embedding",
// "rms_final", "classifier").
using TensorFiller = std::function<void(const std::string& name, float* data, std::size_t count)>;

// Writes a checkpoint of `config` in `format`, tensor by tensor in the file's order, asking `fill`
// for each tensor's values (Q8_0 quantizes them with `group_size`). Throws llm::Error on I/O failure.
void write_checkpoint(const std::string& path, const ModelConfig& config, CheckpointFormat format,
                      const TensorFiller& fill, int group_size = 32);

}  // namespace llm
