// The loader and the chain against real shared libraries: our mha_cpu, and test plugins built to be
// rejected (wrong ABI major, no entry symbol) or to fail (flaky_cpu).
#include "plugin_loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
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

// Why the test plugin `file` (in build/test_plugins) was rejected; a failure when it was found and loaded.
std::string rejection_of(const std::string& file) {
  auto all = load_plugins({LLM_TEST_PLUGIN_DIR});
  const PluginCandidate* c = find_candidate(all, "/" + file);
  if (!c) return file + " not found in " LLM_TEST_PLUGIN_DIR;
  EXPECT_EQ(c->plugin, nullptr) << file << " loaded";
  return c->rejection;
}

TEST(PluginLoader, RejectsWrongAbiMajorNamingBothVersions) {
  const std::string why = rejection_of("wrong_abi.so");
  EXPECT_THAT(why, HasSubstr("ABI major mismatch"));
  EXPECT_THAT(why, HasSubstr("plugin built for ABI " + std::to_string(LLM_ABI_VERSION_MAJOR + 1) + ".0"));
  EXPECT_THAT(why, HasSubstr("runtime speaks ABI " + std::to_string(LLM_ABI_VERSION_MAJOR)));
}

TEST(PluginLoader, RejectsLibraryWithoutEntrySymbol) {
  EXPECT_THAT(rejection_of("no_entry.so"), HasSubstr("missing entry symbol 'llm_backend_entry'"));
}

TEST(PluginLoader, RejectsLibraryWhoseDependencyIsMissingNamingIt) {
  EXPECT_THAT(rejection_of("missing_dep.so"), HasSubstr("libvanishing_dep.so: cannot open shared object file"));
}

TEST(PluginLoader, RejectsFileThatIsNotASharedLibrary) {
  test::TempDir dir;
  std::ofstream(dir.file("fake.so")) << "this is not an ELF file\n";
  std::ofstream(dir.file("notes.txt")) << "not even considered\n";
  auto all = load_plugins({dir.path().string()});
  ASSERT_EQ(all.size(), 1u) << "only *.so files are candidates";
  EXPECT_EQ(all[0].plugin, nullptr);
  EXPECT_THAT(all[0].rejection, HasSubstr("not a loadable shared library"));
  EXPECT_THAT(all[0].rejection, HasSubstr("fake.so: file too short")) << "the dynamic loader's own reason";
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

// While a CUDA graph is captured, a backend that fails is left as usual, but the call throws rather than
// run the next backend inside the capture (whose context_create could not allocate there); outside it, the
// next backend serves the same call.
TEST(BackendChain, ABackendFailingWhileAGraphIsCapturedThrowsInsteadOfTryingTheNextInsideIt) {
  auto all = load_plugins({LLM_PLUGIN_DIR, LLM_TEST_PLUGIN_DIR});
  const ModelConfig model = small_model();
  const int head_dim = model.dim / model.n_heads, kv_dim = model.n_kv_heads * head_dim, ctx = 64;
  ::setenv("LLM_FLAKY_FAIL_AT", "1", 1);  // (read when its context is created: begin_capture below)
  BackendChain chain(all, {"flaky_cpu", "mha_cpu"}, cpu_device_info(1), attention_shape(model, ctx, 1));
  chain.begin_capture();
  ::unsetenv("LLM_FLAKY_FAIL_AT");

  std::vector<float> k(static_cast<size_t>(ctx) * kv_dim, 0.5f), v(k.size(), 0.25f), q(model.dim, 1.0f);
  std::vector<float> out(model.dim, std::nanf(""));
  std::vector<int32_t> q_start{0, 1}, kv_len{3}, slot{0};
  llm_kv_cache_view view{};
  view.struct_size = sizeof(view);
  view.layout = LLM_KV_LAYOUT_CONTIGUOUS;
  view.dtype = LLM_DTYPE_F32;
  view.device_kind = LLM_DEVICE_CPU;
  view.k = k.data(), view.v = v.data();
  view.seq_stride = static_cast<int64_t>(ctx) * kv_dim, view.token_stride = kv_dim, view.head_stride = head_dim;
  llm_attention_args a{};
  a.struct_size = sizeof(a);
  a.num_seqs = 1, a.total_q_tokens = 1, a.max_q_len = 1, a.max_kv_len = 3, a.causal = 1;
  a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  a.dtype = LLM_DTYPE_F32;
  a.q = q.data(), a.q_token_stride = model.dim, a.q_head_stride = head_dim;
  a.out = out.data(), a.out_token_stride = model.dim, a.out_head_stride = head_dim;
  a.q_start = q_start.data(), a.kv_len = kv_len.data(), a.seq_slot = slot.data(), a.kv = &view;

  EXPECT_THAT([&] { chain.decode(a); },
              testing::ThrowsMessage<Error>(
                  HasSubstr("attention backend 'flaky_cpu' failed while a CUDA graph was being captured")));
  EXPECT_EQ(chain.active_name(), "mha_cpu");
  EXPECT_TRUE(chain.served_by().empty());
  EXPECT_TRUE(std::isnan(out[0])) << "mha_cpu ran inside the capture";
  chain.end_capture();
  chain.decode(a);  // the step again, outside the capture
  EXPECT_EQ(chain.served_by(), (std::vector<std::string>{"mha_cpu"}));
  for (float x : out) EXPECT_FLOAT_EQ(x, 0.25f);  // every key holds the same value row
}

// begin_capture opens the serving backend's context before the capture; one that cannot open it is left
// there, with a log line, and the next one's context is opened instead, so calls inside the capture reach
// a backend that is ready.
TEST(BackendChain, ABackendWhoseContextCannotOpenBeforeACaptureIsLeftThere) {
  auto all = load_plugins({LLM_PLUGIN_DIR, LLM_TEST_PLUGIN_DIR});
  BackendChain chain(all, {"flaky_cpu", "mha_cpu"}, cpu_device_info(1), attention_shape(small_model(), 64, 1));
  ::setenv("LLM_FLAKY_NO_CONTEXT", "1", 1);
  chain.begin_capture();
  ::unsetenv("LLM_FLAKY_NO_CONTEXT");
  chain.end_capture();
  EXPECT_EQ(chain.active_name(), "mha_cpu");
}

TEST(BackendChain, DefaultOrderPutsOurBackendsFirstThenOthersByPriority) {
  auto all = load_plugins({LLM_PLUGIN_DIR, LLM_TEST_PLUGIN_DIR});
  BackendChain chain(all, {}, cpu_device_info(1), attention_shape(small_model(), 64, 1));
  // flaky_cpu (priority 100) before the SDK examples (priority 1, then by name); example_future_needs was
  // rejected at load (it needs a newer runtime).
  EXPECT_EQ(chain.names(),
            (std::vector<std::string>{"mha_cpu", "flaky_cpu", "example_abi10", "example_cpu", "example_future_ok"}));
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

namespace llm {
namespace {

namespace fs = std::filesystem;

// mha_cpu.so copied into a fresh directory of ours (0755, file 0755), for the trust rules to act on.
struct PluginCopy {
  test::TempDir dir;
  std::string so = dir.file("mha_cpu.so");
  PluginCopy() {
    fs::copy_file(LLM_PLUGIN_DIR "/mha_cpu.so", so);
    fs::permissions(dir.path(), fs::perms(0755));
    fs::permissions(so, fs::perms(0755));
  }
  PluginCandidate load(const DigestAllowlist& allow = {}) const {
    auto all = load_plugins({dir.path().string()}, allow);
    EXPECT_EQ(all.size(), 1u);
    return all.empty() ? PluginCandidate{} : all[0];
  }
};

TEST(PluginTrust, APluginInAPrivateDirectoryLoads) {
  PluginCopy p;
  const PluginCandidate c = p.load();
  ASSERT_NE(c.plugin, nullptr) << c.rejection;
  EXPECT_EQ(c.plugin->name(), "mha_cpu");
}

TEST(PluginTrust, FilesAndDirectoriesOthersCanWriteAreRefusedBeforeLoading) {
  {
    PluginCopy p;
    fs::permissions(p.so, fs::perms(0777));
    const PluginCandidate c = p.load();
    EXPECT_EQ(c.plugin, nullptr);
    EXPECT_THAT(c.rejection, HasSubstr("plugin file " + p.so + " is writable by other users (mode 0777)"));
  }
  {
    PluginCopy p;
    fs::permissions(p.dir.path(), fs::perms(0777));
    const PluginCandidate c = p.load();
    EXPECT_EQ(c.plugin, nullptr);
    EXPECT_THAT(c.rejection, HasSubstr("plugin directory"));
    EXPECT_THAT(c.rejection, HasSubstr("is writable by other users (mode 0777)"));
  }
}

// Ownership needs chown, which only root may do to arbitrary ids (CI and the GPU machine run as root).
TEST(PluginTrust, FilesOwnedOrGroupWritableByOthersAreRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give a file to another user or group";
  {
    PluginCopy p;
    ASSERT_EQ(::chown(p.so.c_str(), 12345, static_cast<gid_t>(-1)), 0);
    const PluginCandidate c = p.load();
    EXPECT_EQ(c.plugin, nullptr);
    EXPECT_THAT(c.rejection, HasSubstr("is owned by uid 12345, neither the user running llm-runner"));
  }
  {
    PluginCopy p;
    fs::permissions(p.so, fs::perms(0775));
    ASSERT_EQ(::chown(p.so.c_str(), static_cast<uid_t>(-1), 12345), 0);
    PluginCandidate c = p.load();
    EXPECT_EQ(c.plugin, nullptr);
    EXPECT_THAT(c.rejection, HasSubstr("is writable by group 12345, not the user's own (mode 0775)"));
    ASSERT_EQ(::chown(p.so.c_str(), static_cast<uid_t>(-1), ::getegid()), 0);  // the user's own group may write
    c = p.load();
    EXPECT_NE(c.plugin, nullptr) << c.rejection;
  }
}

TEST(PluginTrust, Sha256OfAKnownText) {
  test::TempDir dir;
  std::ofstream(dir.file("abc")) << "abc";
  EXPECT_EQ(sha256_file(dir.file("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_THROW(sha256_file(dir.file("missing")), Error);
}

TEST(PluginTrust, DigestAllowlistLoadsOnlyListedFilesUnderTheirListedName) {
  PluginCopy p;
  const std::string digest = sha256_file(p.so);
  PluginCandidate c = p.load({{"mha_cpu", digest}});
  EXPECT_NE(c.plugin, nullptr) << c.rejection;

  c = p.load({{"mha_cpu", std::string(64, '0')}, {"flash_cuda", std::string(64, '1')}});
  EXPECT_EQ(c.plugin, nullptr);
  EXPECT_THAT(c.rejection, HasSubstr("its SHA-256 " + digest +
                                     " is not in plugins.require_digest (which lists: "
                                     "flash_cuda, mha_cpu)"));

  c = p.load({{"trusted_backend", digest}});  // the right bytes, but they claim another name
  EXPECT_EQ(c.plugin, nullptr);
  EXPECT_THAT(c.rejection, HasSubstr("lists for 'trusted_backend', but the plugin calls itself 'mha_cpu'"));
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// A probe that crashes or hangs is run first in a child process: the verdict names the signal or the
// time limit, and this process (the test) lives on.
TEST(BackendChain, ProbeThatCrashesOrHangsIsRejectedAndTheRunnerLivesOn) {
  auto all = load_plugins({LLM_TEST_PLUGIN_DIR});
  const PluginCandidate* c = find_candidate(all, "/bad_probe.so");
  ASSERT_TRUE(c && c->plugin) << (c ? c->rejection : "bad_probe.so not found");
  const llm_device_info cpu = cpu_device_info(1);
  const llm_attention_shape shape = attention_shape(small_model(), 64, 1);

  ProbeVerdict v = probe_plugin(c->plugin, cpu, shape);  // well behaved: its own reason
  EXPECT_FALSE(v.supported);
  EXPECT_THAT(v.reason, HasSubstr("bad_probe declines"));

  ::setenv("LLM_TEST_BAD_PROBE", "crash", 1);
  v = probe_plugin(c->plugin, cpu, shape);
  EXPECT_FALSE(v.supported);
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer catches the SEGV in the child and exits it with its own report instead
  EXPECT_THAT(v.reason, HasSubstr("in an isolated child process"));
#else
  EXPECT_THAT(v.reason, HasSubstr("probe crashed (signal 11, Segmentation fault) in an isolated child process"));
#endif

  ::setenv("LLM_TEST_BAD_PROBE", "hang", 1);
  ::setenv("LLM_PROBE_TIMEOUT_MS", "300", 1);
  const auto t0 = std::chrono::steady_clock::now();
  v = probe_plugin(c->plugin, cpu, shape);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ::unsetenv("LLM_TEST_BAD_PROBE");
  ::unsetenv("LLM_PROBE_TIMEOUT_MS");
  EXPECT_FALSE(v.supported);
  EXPECT_THAT(v.reason, HasSubstr("probe did not return within 300 ms in an isolated child process (killed"));
  EXPECT_LT(s, 5.0);
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// Minor versions (attention_backend.h): the SDK example built against the frozen ABI 1.0 header loads
// and probes; built against a made-up ABI 1.3 it loads when it needs at most this runtime's minor, and is
// rejected naming both versions when it needs more.
TEST(PluginLoader, OlderMinorPluginsLoadNewerOnesWhenTheRuntimeHoldsWhatTheyNeed) {
  auto all = load_plugins({LLM_TEST_PLUGIN_DIR});
  const PluginCandidate* old_minor = find_candidate(all, "/example_abi10.so");
  ASSERT_TRUE(old_minor && old_minor->plugin) << (old_minor ? old_minor->rejection : "missing");
  EXPECT_EQ(old_minor->plugin->iface().abi_minor, 0u);
  EXPECT_EQ(old_minor->plugin->iface().struct_size, offsetof(llm_backend_iface, min_runtime_minor));
  EXPECT_TRUE(probe_plugin(old_minor->plugin, cpu_device_info(1), attention_shape(small_model(), 64, 1)).supported);

  const PluginCandidate* newer = find_candidate(all, "/example_future_ok.so");
  ASSERT_TRUE(newer && newer->plugin) << (newer ? newer->rejection : "missing");
  EXPECT_EQ(newer->plugin->iface().abi_minor, 3u);
  EXPECT_GT(newer->plugin->iface().struct_size, sizeof(llm_backend_iface));

  const PluginCandidate* needs = find_candidate(all, "/example_future_needs.so");
  ASSERT_NE(needs, nullptr);
  EXPECT_EQ(needs->plugin, nullptr);
  EXPECT_THAT(needs->rejection, HasSubstr("plugin built for ABI 1.3 needs a runtime of ABI 1.3 or newer (its "
                                          "min_runtime_minor); this runtime speaks ABI 1.2"));
}

}  // namespace
}  // namespace llm
