// llama2.c checkpoints: legacy (version 0) fp32, version 1 fp32 and version 2 int8 (Q8_0).
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

enum class CheckpointFormat { LegacyF32, V1F32, V2Q8 };

const char* checkpoint_format_name(CheckpointFormat format);

class Checkpoint {
 public:
  // Memory-maps (or, with LoadMode::Memory, reads) and validates `path`. Throws llm::Error on any problem.
  static std::unique_ptr<Checkpoint> open(const std::string& path, LoadMode mode = LoadMode::Mmap);

  const std::string& path() const { return path_; }
  CheckpointFormat format() const { return format_; }
  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }

 private:
  Checkpoint() = default;
  std::string path_;
  CheckpointFormat format_ = CheckpointFormat::LegacyF32;
  ModelConfig config_;
  ModelWeights weights_;
  MappedFile file_;
  std::vector<std::vector<float>> owned_;  // tensors converted at load (see checkpoint.cpp)
};

// Fills `count` fp32 values of the tensor called `name` (e.g. "layers.3.wq", "token_embedding",
// "rms_final", "classifier").
using TensorFiller = std::function<void(const std::string& name, float* data, std::size_t count)>;

// Writes a checkpoint of `config` in `format`, tensor by tensor in the file's order, asking `fill`
// for each tensor's values (Q8_0 quantizes them with `group_size`). Throws llm::Error on I/O failure.
void write_checkpoint(const std::string& path, const ModelConfig& config, CheckpointFormat format,
                      const TensorFiller& fill, int group_size = 32);

}  // namespace llm
