// Helpers shared by the tests: locating models (skip with a message when absent) and temp files.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "models_dir.h"

namespace llm::test {

// Full path of `name` in the models directory, or "" (callers GTEST_SKIP with the returned reason).
inline std::string model_path(const std::string& name) {
  std::string dir = resolve_models_dir();
  if (dir.empty()) return "";
  auto p = std::filesystem::path(dir) / name;
  return std::filesystem::exists(p) ? p.string() : "";
}

// Skips the current test, naming the model and where it was looked for, when `name` is missing.
#define LLM_REQUIRE_MODEL(var, name)                                                                             \
  const std::string var = ::llm::test::model_path(name);                                                         \
  if (var.empty()) {                                                                                             \
    GTEST_SKIP() << "model " << (name) << " not found in the models directory ('" << ::llm::resolve_models_dir() \
                 << "'); set LLM_MODELS_DIR to run this test";                                                   \
  }

// A fresh empty directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("llm_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  static int& counter() {
    static int c = 0;
    return c;
  }
  std::filesystem::path path_;
};

}  // namespace llm::test
