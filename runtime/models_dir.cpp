#include "models_dir.h"

#include <cstdlib>
#include <filesystem>

#include "error.h"

namespace fs = std::filesystem;

namespace llm {

std::string resolve_models_dir(const std::string& configured) {
  if (!configured.empty()) return configured;
  if (const char* env = std::getenv("LLM_MODELS_DIR"); env && *env) return env;
  for (const fs::path& candidate :
       {fs::path("../shared/models"), fs::path(LLM_SOURCE_DIR) / ".." / "shared" / "models"}) {
    std::error_code ec;
    if (fs::is_directory(candidate, ec)) return fs::weakly_canonical(candidate, ec).string();
  }
  return "";
}

std::string resolve_model_path(const std::string& path, const std::string& models_dir) {
  fs::path p(path);
  std::error_code ec;
  if (path.empty() || p.is_absolute() || fs::exists(p, ec)) return path;
  // A relative name with nowhere to look it up: say where it was looked for, not only "cannot open".
  if (models_dir.empty())
    fail(
        "{}: not found in the current directory, and there is no models directory to look in (set "
        "models_dir in the config or LLM_MODELS_DIR, or put the models in ../shared/models)",
        path);
  return (fs::path(models_dir) / p).string();
}

}  // namespace llm
