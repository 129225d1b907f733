// Random-weight checkpoints of named shapes, for benchmarks and tests that need a model of a given size
// (speed does not depend on the values). Used by tools/make_checkpoint and benches/.
#pragma once

#include <string>
#include <vector>

#include "checkpoint.h"
#include "model_config.h"

namespace llm {

// The shape called `name` (stories260K, stories15M, stories42M, stories110M, tinyllama, llama2-7b,
// llama2-70b), with the published model's classifier (shared for the stories models, separate for the
// others); throws llm::Error listing the names when unknown.
ModelConfig model_preset(const std::string& name);
std::vector<std::string> model_preset_names();

// Deterministic pseudo-random weights: each tensor's values come from `seed` and the tensor's name, so
// they do not depend on the format or the write order. Norm gains near 1, the embedding std 0.02,
// other matrices std 1/sqrt(cols) so activations keep unit scale.
TensorFiller random_weights(const ModelConfig& config, uint64_t seed);

}  // namespace llm
