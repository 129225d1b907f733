// The loader and the chain against real shared libraries: our mha_cpu, and test plugins built to be
// rejected (wrong ABI major, no entry symbol) or to fail (flaky_cpu).
#include "plugin_loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "backend_chain.h"
#include "engine.h"
#include "error.h"
#include "test_support.h"

namespace llm {
namespace {

using testing::HasSubstr;

const PluginCandidate* find_candidate(const std::vector<PluginCandidate>& all, const std::string& file) {
  for (const auto& c : all)
    if (c.path.size() >= file.size() && c.path.compare(c.path.size() - file.size(), file.size(), file) == 0) return &c;
  return nullptr;
}

TEST(PluginLoader, LoadsMhaCpuWithItsMetadata) {
  auto all = load_plugins({LLM_PLUGIN_DIR});
  const PluginCandidate* c = find_candidate(all, "/mha_cpu.so");
  ASSERT_NE(c, nullptr) << "mha_cpu.so not found in " << LLM_PLUGIN_DIR;
  ASSERT_NE(c->plugin, nullptr) << c->rejection;
  EXPECT_EQ(c->plugin->name(), "mha_cpu");
  EXPECT_EQ(c->plugin->device_kind(), LLM_DEVICE_CPU);
  EXPECT_EQ(c->plugin->iface().abi_major, static_cast<uint32_t>(LLM_ABI_VERSION_MAJOR));
}

TEST(PluginLoader, RejectsWrongAbiMajorNamingBothVersions) {
  auto all = load_plugins({LLM_TEST_PLUGIN_DIR});
  const PluginCandidate* c = find_candidate(all, "/wrong_abi.so");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->plugin, nullptr);
  EXPECT_THAT(c->rejection, HasSubstr("ABI major mismatch"));
  EXPECT_THAT(c->rejection, HasSubstr("plugin built for ABI " + std::to_string(LLM_ABI_VERSION_MAJOR + 1) + ".0"));
  EXPECT_THAT(c->rejection, HasSubstr("runtime speaks ABI " + std::to_string(LLM_ABI_VERSION_MAJOR)));
}

TEST(PluginLoader, RejectsLibraryWithoutEntrySymbol) {
  auto all = load_plugins({LLM_TEST_PLUGIN_DIR});
  const PluginCandidate* c = find_candidate(all, "/no_entry.so");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->plugin, nullptr);
  EXPECT_THAT(c->rejection, HasSubstr("missing entry symbol 'llm_backend_entry'"));
}

TEST(PluginLoader, RejectsFileThatIsNotASharedLibrary) {
  test::TempDir dir;
  std::ofstream(dir.file("fake.so")) << "this is not an ELF file\n";
  std::ofstream(dir.file("notes.txt")) << "not even considered\n";
  auto all = load_plugins({dir.path().string()});
  ASSERT_EQ(all.size(), 1u) << "only *.so files are candidates";
  EXPECT_EQ(all[0].plugin, nullptr);
  EXPECT_THAT(all[0].rejection, HasSubstr("not a loadable shared library"));
}

TEST(PluginLoader, FirstPluginOfANameWinsLaterOnesAreRejected) {
  auto all = load_plugins({LLM_PLUGIN_DIR, LLM_PLUGIN_DIR "/../plugins"});
  int loaded = 0;
  for (const auto& c : all)
    if (c.plugin && c.plugin->name() == "mha_cpu") ++loaded;
  EXPECT_EQ(loaded, 1);
}

TEST(PluginLoader, SearchDirsComeFromConfigThenEnvironmentThenNextToExecutable) {
  ::setenv("LLM_PLUGIN_PATH", "/tmp/env_a:/tmp/env_b", 1);
  auto dirs = plugin_search_dirs({"/tmp/configured"});
  ::unsetenv("LLM_PLUGIN_PATH");
  ASSERT_GE(dirs.size(), 4u);
  EXPECT_EQ(dirs[0], "/tmp/configured");
  EXPECT_EQ(dirs[1], "/tmp/env_a");
  EXPECT_EQ(dirs[2], "/tmp/env_b");
  EXPECT_THAT(dirs[3], testing::EndsWith("/plugins"));
  for (const auto& d : dirs) EXPECT_NE(d, ".") << "the current directory is never searched implicitly";
}

ModelConfig small_model() {
  ModelConfig c;
  c.dim = 64, c.hidden_dim = 96, c.n_layers = 1, c.n_heads = 8, c.n_kv_heads = 4, c.vocab_size = 32, c.max_seq_len = 64;
  return c;
}

TEST(BackendChain, FollowsConfiguredOrderAndSkipsMissingBackendsWithAReason) {
  auto all = load_plugins({LLM_PLUGIN_DIR, LLM_TEST_PLUGIN_DIR});
  BackendChain chain(all, {"flash_cuda", "flaky_cpu", "mha_cpu"}, cpu_device_info(1),
                     attention_shape(small_model(), 64, 1));
  EXPECT_EQ(chain.names(), (std::vector<std::string>{"flaky_cpu", "mha_cpu"}));
  EXPECT_EQ(chain.active_name(), "flaky_cpu");
}

TEST(BackendChain, DefaultOrderPutsOurBackendsFirstThenOthersByPriority) {
  auto all = load_plugins({LLM_PLUGIN_DIR, LLM_TEST_PLUGIN_DIR});
  BackendChain chain(all, {}, cpu_device_info(1), attention_shape(small_model(), 64, 1));
  EXPECT_EQ(chain.names(), (std::vector<std::string>{"mha_cpu", "flaky_cpu"}));
}

TEST(BackendChain, NoUsableBackendListsEveryCandidateAndWhy) {
  auto all = load_plugins({LLM_TEST_PLUGIN_DIR});
  llm_attention_shape shape = attention_shape(small_model(), 64, 1);
  shape.dtype = LLM_DTYPE_BF16;  // nothing on the CPU serves bf16
  try {
    BackendChain chain(all, {"flaky_cpu", "mha_cpu"}, cpu_device_info(1), shape);
    FAIL() << "expected llm::Error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("no usable attention backend"));
    EXPECT_THAT(e.what(), HasSubstr("flaky_cpu serves fp32 on the CPU only"));
    EXPECT_THAT(e.what(), HasSubstr("mha_cpu: no plugin of that name was loaded"));
    EXPECT_THAT(e.what(), HasSubstr("wrong_abi.so: ABI major mismatch"));
    EXPECT_THAT(e.what(), HasSubstr("no_entry.so: missing entry symbol"));
  }
}

TEST(BackendChain, ProbeRefusalCarriesThePluginsReason) {
  auto all = load_plugins({LLM_PLUGIN_DIR});
  const PluginCandidate* c = find_candidate(all, "/mha_cpu.so");
  ASSERT_TRUE(c && c->plugin);
  llm_device_info gpu = cpu_device_info(1);
  gpu.kind = LLM_DEVICE_CUDA;
  ProbeVerdict v = probe_plugin(c->plugin, gpu, attention_shape(small_model(), 64, 1));
  EXPECT_FALSE(v.supported);
  EXPECT_THAT(v.reason, HasSubstr("CPU"));
}

}  // namespace
}  // namespace llm
