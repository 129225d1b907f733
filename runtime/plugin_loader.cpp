#include "plugin_loader.h"

#include <dlfcn.h>

#include <algorithm>
#include <boost/dll/runtime_symbol_info.hpp>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "log.h"

namespace fs = std::filesystem;

namespace llm {

Plugin::Plugin(boost::dll::shared_library library, const llm_backend_iface* iface, std::string path)
    : library_(std::move(library)), iface_(iface), path_(std::move(path)) {}

const char* device_kind_name(int kind) {
  switch (kind) {
    case LLM_DEVICE_CPU: return "cpu";
    case LLM_DEVICE_CUDA: return "cuda";
    default: return "unknown";
  }
}

std::vector<std::string> plugin_search_dirs(const std::vector<std::string>& configured) {
  std::vector<std::string> dirs = configured;
  if (const char* env = std::getenv("LLM_PLUGIN_PATH"); env && *env) {
    std::stringstream ss(env);
    for (std::string dir; std::getline(ss, dir, ':');)
      if (!dir.empty()) dirs.push_back(dir);
  }
  std::error_code ec;
  fs::path exe_dir = boost::dll::program_location(ec).parent_path();
  if (!ec) {
    dirs.push_back((exe_dir.parent_path() / "plugins").string());  // the build tree: build/bin, build/plugins
    dirs.push_back((exe_dir.parent_path() / "lib" / "llm-runner" / "plugins").string());  // installed: PREFIX/bin
  }
  std::vector<std::string> unique;
  for (auto& d : dirs) {
    std::string key = fs::weakly_canonical(d, ec).string();
    if (std::none_of(unique.begin(), unique.end(),
                     [&](const std::string& u) { return fs::weakly_canonical(u, ec).string() == key; }))
      unique.push_back(d);
  }
  return unique;
}

namespace {

// Which required members a table lacks (absent from its struct_size, or NULL).
std::string missing_members(const llm_backend_iface& t) {
  std::string missing;
  auto need = [&](bool present, const char* name) {
    if (!present) missing += missing.empty() ? name : std::string(", ") + name;
  };
  auto within = [&](size_t offset) { return t.struct_size >= offset + sizeof(void*); };
  need(t.name && *t.name, "name");
  need(within(offsetof(llm_backend_iface, probe)) && t.probe, "probe");
  need(within(offsetof(llm_backend_iface, context_create)) && t.context_create, "context_create");
  need(within(offsetof(llm_backend_iface, context_destroy)) && t.context_destroy, "context_destroy");
  need(within(offsetof(llm_backend_iface, prefill)) && t.prefill, "prefill");
  need(within(offsetof(llm_backend_iface, decode)) && t.decode, "decode");
  need(within(offsetof(llm_backend_iface, last_error)) && t.last_error, "last_error");
  return missing;
}

// Why the dynamic loader refuses `path` in its own words ("invalid ELF header", "libfoo.so: cannot open
// shared object file"): Boost.DLL reports every failure as one error code and clears dlerror(), so ask
// dlopen again. `fallback` when it loads this time.
std::string dlopen_error(const fs::path& path, const std::string& fallback) {
  dlerror();
  if (void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) {
    dlclose(handle);
    return fallback;
  }
  const char* why = dlerror();
  return why ? why : fallback;
}

// Loads one file; returns the plugin or sets `rejection`.
std::shared_ptr<Plugin> load_one(const fs::path& path, std::string& rejection) {
  boost::dll::shared_library lib;
  boost::dll::fs::error_code ec;
  // RTLD_NODELETE: a plugin stays mapped for the life of the process, even after its last user is gone.
  // CUDA plugins register their kernels with the process's one CUDA runtime when loaded; unloading and
  // reloading several of them (each Engine loads the plugin directory) was seen to leave the runtime
  // unable to find a reloaded plugin's kernels (cudaErrorInvalidValue from cudaFuncGetAttributes).
  const auto mode = boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local |
                    static_cast<boost::dll::load_mode::type>(RTLD_NODELETE);
  lib.load(path, mode, ec);
  if (ec) {
    rejection = "not a loadable shared library: " + dlopen_error(path, ec.message());
    return nullptr;
  }
  if (!lib.has(LLM_BACKEND_ENTRY_SYMBOL)) {
    rejection = std::string("missing entry symbol '") + LLM_BACKEND_ENTRY_SYMBOL + "' (not an llm attention plugin?)";
    return nullptr;
  }
  auto entry = lib.get<const llm_backend_iface*(uint32_t)>(LLM_BACKEND_ENTRY_SYMBOL);
  const llm_backend_iface* iface = entry(LLM_ABI_VERSION_MAJOR);
  if (!iface) {
    rejection = "entry symbol returned no function table for ABI major " + std::to_string(LLM_ABI_VERSION_MAJOR);
    return nullptr;
  }
  if (iface->struct_size < offsetof(llm_backend_iface, name)) {
    rejection = "function table too small (struct_size " + std::to_string(iface->struct_size) + ")";
    return nullptr;
  }
  if (iface->abi_major != LLM_ABI_VERSION_MAJOR) {
    rejection = "ABI major mismatch: plugin built for ABI " + std::to_string(iface->abi_major) + "." +
                std::to_string(iface->abi_minor) + ", runtime speaks ABI " + std::to_string(LLM_ABI_VERSION_MAJOR) +
                "." + std::to_string(LLM_ABI_VERSION_MINOR);
    return nullptr;
  }
  // Minor versions: members past the plugin's struct_size are absent; a newer plugin says which runtime
  // minor it needs at least (min_runtime_minor, since 1.1).
  const uint32_t needs = iface->struct_size >= offsetof(llm_backend_iface, min_runtime_minor) + sizeof(uint32_t)
                             ? iface->min_runtime_minor
                             : 0;
  if (needs > LLM_ABI_VERSION_MINOR) {
    rejection = "plugin built for ABI " + std::to_string(iface->abi_major) + "." + std::to_string(iface->abi_minor) +
                " needs a runtime of ABI " + std::to_string(LLM_ABI_VERSION_MAJOR) + "." + std::to_string(needs) +
                " or newer (its min_runtime_minor); this runtime speaks ABI " + std::to_string(LLM_ABI_VERSION_MAJOR) +
                "." + std::to_string(LLM_ABI_VERSION_MINOR);
    return nullptr;
  }
  if (std::string missing = missing_members(*iface); !missing.empty()) {
    rejection = "function table lacks required members: " + missing;
    return nullptr;
  }
  return std::make_shared<Plugin>(std::move(lib), iface, path.string());
}

// The name `allowlist` gives the file's digest, or "" with `rejection` set.
std::string allowlisted_name(const std::string& path, const DigestAllowlist& allowlist, std::string& rejection) {
  std::string digest;
  try {
    digest = sha256_file(path);
  } catch (const std::exception& e) {
    rejection = e.what();
    return "";
  }
  std::string names;
  for (const auto& [name, want] : allowlist) {
    if (want == digest) return name;
    names += (names.empty() ? "" : ", ") + name;
  }
  rejection = "its SHA-256 " + digest + " is not in plugins.require_digest (which lists: " + names + ")";
  return "";
}

}  // namespace

std::vector<PluginCandidate> load_plugins(const std::vector<std::string>& dirs, const DigestAllowlist& allowlist) {
  std::vector<PluginCandidate> out;
  for (const auto& dir : dirs) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      log().debug("plugin dir {}: not a directory, skipped", dir);
      continue;
    }
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(dir, ec))
      if (entry.path().extension() == ".so" && !entry.is_directory()) files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    log().debug("plugin dir {}: {} candidate file(s)", dir, files.size());
    for (const auto& file : files) {
      PluginCandidate c{file.string(), nullptr, ""};
      // Before the file is opened: loading runs its code.
      c.rejection = untrusted_file_reason(c.path);
      std::string listed_name;
      if (c.rejection.empty() && !allowlist.empty()) listed_name = allowlisted_name(c.path, allowlist, c.rejection);
      if (c.rejection.empty()) c.plugin = load_one(file, c.rejection);
      if (c.plugin && !allowlist.empty() && c.plugin->name() != listed_name) {
        c.rejection = "its SHA-256 is the one plugins.require_digest lists for '" + listed_name +
                      "', but the plugin calls itself '" + c.plugin->name() + "'";
        c.plugin.reset();
      }
      if (c.plugin) {
        auto same = std::find_if(out.begin(), out.end(), [&](const PluginCandidate& o) {
          return o.plugin && o.plugin->name() == c.plugin->name();
        });
        if (same != out.end()) {
          c.rejection = "duplicate backend name '" + c.plugin->name() + "' (already loaded from " + same->path + ")";
          c.plugin.reset();
        }
      }
      if (c.plugin)
        log().info("plugin {}: loaded backend '{}' {} (ABI {}.{}, {})", c.path, c.plugin->name(), c.plugin->version(),
                   c.plugin->iface().abi_major, c.plugin->iface().abi_minor, device_kind_name(c.plugin->device_kind()));
      else
        log().warn("plugin {}: rejected: {}", c.path, c.rejection);
      out.push_back(std::move(c));
    }
  }
  return out;
}

}  // namespace llm
