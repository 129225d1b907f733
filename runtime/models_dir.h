// Where models are found: the one mechanism shared by llm-runner, its configs, tests and benches.
#pragma once

#include <string>

namespace llm {

// The models directory, first of: `configured` (the config's `models_dir`), the LLM_MODELS_DIR
// environment variable, `../shared/models` under the current directory, the same beside the
// source tree. Returns "" when none is set and no default exists.
std::string resolve_models_dir(const std::string& configured = "");

// `path` as given when empty, absolute or existing relative to the current directory; else joined to the
// models directory. A relative path that is not there with no models directory is an error that says so.
std::string resolve_model_path(const std::string& path, const std::string& models_dir);

}  // namespace llm
