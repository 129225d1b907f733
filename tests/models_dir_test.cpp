// Where model and tokenizer paths are looked up (runtime/models_dir.h): as given, in the models directory,
// or, with nowhere to look, an error that says where to put the models.
#include "models_dir.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "error.h"

namespace llm {
namespace {

using testing::HasSubstr;

std::string error_of(const std::string& path, const std::string& models_dir) {
  try {
    resolve_model_path(path, models_dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelsDir, RelativeNamesAreJoinedToTheModelsDirectory) {
  EXPECT_EQ(resolve_model_path("no-such-model.bin", "/models"), "/models/no-such-model.bin");
  EXPECT_EQ(resolve_model_path("/abs/model.bin", "/models"), "/abs/model.bin");
  EXPECT_EQ(resolve_model_path("", "/models"), "");  // no tokenizer named: the checkpoint's own is looked for
}

TEST(ModelsDir, ARelativeNameWithNowhereToLookIsAClearError) {
  const std::string message = error_of("no-such-model.bin", "");
  EXPECT_THAT(message, HasSubstr("no-such-model.bin: not found in the current directory"));
  EXPECT_THAT(message, HasSubstr("LLM_MODELS_DIR"));
  EXPECT_THAT(message, HasSubstr("../shared/models"));
  // Paths that need no models directory pass through untouched (opening them says the rest).
  EXPECT_EQ(error_of("/abs/no-such-model.bin", ""), "");
  EXPECT_EQ(error_of("", ""), "");
}

}  // namespace
}  // namespace llm
