// The YAML schema: every field read, and each kind of bad input an error naming the key.
#include "run_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "error.h"
#include "test_support.h"

namespace llm {
namespace {

using testing::HasSubstr;

std::string error_of(const std::string& yaml) {
  try {
    parse_run_config(yaml, "test.yaml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(RunConfig, ReadsEveryField) {
  RunConfig c = parse_run_config(R"(
models_dir: /models
model: {path: m.bin, tokenizer: t.bin, max_context: 128, load: memory}
generation: {prompt: "Hi there", max_tokens: 7, temperature: 0.8, top_k: 40, top_p: 0.9, seed: 99, add_bos: false}
runtime: {device: auto, dtype: fp16, threads: 3}
backends: {order: [mha_cpu, other], plugin_dirs: [/p1, rel], fail: [mha_cpu@7]}
logging: {level: debug}
)",
                                 "x.yaml", "/base");
  EXPECT_EQ(c.models_dir, "/models");
  EXPECT_EQ(c.model, "m.bin");
  EXPECT_EQ(c.tokenizer, "t.bin");
  EXPECT_EQ(c.max_context, 128);
  EXPECT_EQ(c.load, "memory");
  EXPECT_EQ(c.prompt, "Hi there");
  EXPECT_EQ(c.max_tokens, 7);
  EXPECT_FLOAT_EQ(c.sampling.temperature, 0.8f);
  EXPECT_EQ(c.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(c.sampling.top_p, 0.9f);
  EXPECT_EQ(c.sampling.seed, 99u);
  EXPECT_FALSE(c.add_bos);
  EXPECT_EQ(c.threads, 3);
  EXPECT_EQ(c.device, "auto");
  EXPECT_EQ(c.dtype, "fp16");
  EXPECT_EQ(c.backend_order, (std::vector<std::string>{"mha_cpu", "other"}));
  EXPECT_EQ(c.plugin_dirs, (std::vector<std::string>{"/p1", "/base/rel"}));
  EXPECT_EQ(c.fail_backend, std::vector<std::string>{"mha_cpu@7"});
  EXPECT_EQ(c.log_level, "debug");
}

TEST(RunConfig, EmptyDocumentGivesDefaults) {
  RunConfig c = parse_run_config("", "empty.yaml");
  EXPECT_EQ(c.max_tokens, 256);
  EXPECT_EQ(c.sampling.temperature, 0.0f);
}

TEST(RunConfig, UnknownKeysAreErrorsNamingTheKeyAndTheAlternatives) {
  EXPECT_THAT(error_of("generation: {temprature: 1}"), HasSubstr("unknown key 'generation.temprature'"));
  EXPECT_THAT(error_of("generation: {temprature: 1}"), HasSubstr("temperature"));
  EXPECT_THAT(error_of("colour: blue"), HasSubstr("unknown key 'colour'"));
  EXPECT_THAT(error_of("model: {path: a, weights: b}"), HasSubstr("test.yaml: unknown key 'model.weights'"));
}

TEST(RunConfig, WrongTypesNameTheKeyTheExpectedFormAndTheValue) {
  EXPECT_THAT(error_of("generation: {max_tokens: many}"),
              HasSubstr("'generation.max_tokens' must be an integer >= 1, got 'many'"));
  EXPECT_THAT(error_of("generation: {temperature: [1, 2]}"), HasSubstr("'generation.temperature' must be"));
  EXPECT_THAT(error_of("generation: {add_bos: maybe}"), HasSubstr("'generation.add_bos' must be true or false"));
  EXPECT_THAT(error_of("backends: {order: mha_cpu}"), HasSubstr("'backends.order' must be a list of strings"));
  EXPECT_THAT(error_of("runtime: 5"), HasSubstr("'runtime' must be a mapping"));
  EXPECT_THAT(error_of("generation: {seed: -1}"), HasSubstr("'generation.seed' must be a non-negative integer"));
}

TEST(RunConfig, OutOfRangeValuesAreErrors) {
  EXPECT_THAT(error_of("generation: {max_tokens: 0}"), HasSubstr("'generation.max_tokens' must be an integer >= 1"));
  EXPECT_THAT(error_of("generation: {temperature: -0.5}"), HasSubstr("'generation.temperature'"));
  EXPECT_THAT(error_of("generation: {top_p: 0}"), HasSubstr("'generation.top_p' must be a number in (0, 1]"));
  EXPECT_THAT(error_of("generation: {top_p: 1.5}"), HasSubstr("'generation.top_p'"));
  EXPECT_THAT(error_of("generation: {top_k: -3}"), HasSubstr("'generation.top_k'"));
  EXPECT_THAT(error_of("runtime: {threads: -1}"), HasSubstr("'runtime.threads'"));
  EXPECT_THAT(error_of("runtime: {device: tpu}"), HasSubstr("'runtime.device' must be one of cpu, cuda, auto"));
  EXPECT_THAT(error_of("runtime: {dtype: fp8}"), HasSubstr("'runtime.dtype' must be one of bf16, fp16, fp32"));
  EXPECT_THAT(error_of("model: {load: disk}"), HasSubstr("'model.load' must be 'mmap'"));
  EXPECT_THAT(error_of("backends: {fail: [mha_cpu]}"), HasSubstr("'backends.fail': injected failure 'mha_cpu'"));
  EXPECT_THAT(error_of("logging: {level: loud}"), HasSubstr("'logging.level' must be one of"));
}

TEST(RunConfig, YamlSyntaxErrorsGiveFileLineAndColumn) {
  EXPECT_THAT(error_of("generation: {prompt: \"unterminated}\n"), HasSubstr("test.yaml: YAML syntax error at line"));
}

TEST(RunConfig, FileErrorsNameTheFile) {
  test::TempDir dir;
  try {
    load_run_config(dir.file("missing.yaml"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("missing.yaml: cannot open"));
  }
  try {
    load_run_config(dir.path().string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("is a directory"));
  }
}

TEST(RunConfig, ShippedConfigsParseAndNameModelsThatExist) {
  for (const char* name : {"stories260K.yaml", "stories260K_q80.yaml"}) {
    RunConfig c = load_run_config(std::string(LLM_SOURCE_DIR) + "/configs/" + name);
    EXPECT_NO_THROW(validate_run_config(c)) << name;
    EXPECT_FALSE(c.model.empty()) << name;
  }
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

TEST(RunConfig, PluginDigestAllowlistIsReadAndChecked) {
  const std::string digest(64, 'A');
  RunConfig c = parse_run_config("plugins:\n  require_digest:\n    mha_cpu: " + digest + "\n", "test.yaml");
  ASSERT_EQ(c.require_digest.size(), 1u);
  EXPECT_EQ(c.require_digest.at("mha_cpu"), std::string(64, 'a'));  // compared in lower case
  auto error_of = [](const std::string& yaml) {
    try {
      parse_run_config(yaml, "test.yaml");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_THAT(error_of("plugins: {require_digest: {mha_cpu: 1234}}"),
              testing::HasSubstr("'plugins.require_digest.mha_cpu' must be a SHA-256 digest (64 hex digits"));
  EXPECT_THAT(error_of("plugins: {require_digest: [abc]}"),
              testing::HasSubstr("'plugins.require_digest' must be a mapping of plugin names to SHA-256 digests"));
  EXPECT_THAT(error_of("plugins: {allow: x}"), testing::HasSubstr("unknown key 'plugins.allow'"));
  EXPECT_EQ(parse_run_config("backends: {check_output: [mha_cpu, flaky_cpu]}", "t.yaml").check_output,
            (std::vector<std::string>{"mha_cpu", "flaky_cpu"}));
  EXPECT_EQ(parse_run_config("parallel: {tensor: 4}", "t.yaml").tensor_parallel, 4);
  EXPECT_THAT(error_of("parallel: {tensor: 0}"), testing::HasSubstr("'parallel.tensor' must be between 1 and 64"));
  EXPECT_THAT(error_of("backends: {check_output: yes}"),
              testing::HasSubstr("'backends.check_output' must be a list of strings"));
}

}  // namespace
}  // namespace llm
