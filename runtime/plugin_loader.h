// Finds attention-backend plugins on disk and loads them through Boost.DLL. Every file considered is
// recorded (and logged) as loaded or rejected with its reason: not a shared library, missing entry
// symbol, ABI major mismatch, incomplete function table, duplicate name, and, before it is opened at all, a
// file or directory others could have written, or a digest the allowlist does not hold (plugin_trust.h).
#pragma once

#include <llm/attention_backend.h>

#include <boost/dll/shared_library.hpp>
#include <memory>
#include <string>
#include <vector>

#include "plugin_trust.h"

namespace llm {

// One loaded plugin. The library stays mapped for as long as anything holds this object.
class Plugin {
 public:
  Plugin(boost::dll::shared_library library, const llm_backend_iface* iface, std::string path);

  const llm_backend_iface& iface() const { return *iface_; }
  const std::string& path() const { return path_; }
  std::string name() const { return iface_->name; }
  std::string version() const { return iface_->version ? iface_->version : "?"; }
  llm_device_kind device_kind() const { return static_cast<llm_device_kind>(iface_->device_kind); }

 private:
  boost::dll::shared_library library_;
  const llm_backend_iface* iface_;
  std::string path_;
};

// What happened to one file the loader considered.
struct PluginCandidate {
  std::string path;
  std::shared_ptr<Plugin> plugin;  // set when loaded
  std::string rejection;           // set when rejected: why
};

// Where plugins are searched, in order: `configured` (the config's backends.plugin_dirs), the
// LLM_PLUGIN_PATH environment variable (':'-separated), then `plugins/` next to the executable's
// directory (build/bin/llm-runner -> build/plugins) and the installed plugin directory
// (PREFIX/bin/llm-runner -> PREFIX/lib/llm-runner/plugins). The current directory is never searched
// implicitly. Duplicates are removed.
std::vector<std::string> plugin_search_dirs(const std::vector<std::string>& configured);

// Loads every `*.so` file in `dirs` (non-recursive, sorted by name within a directory). Missing
// directories are logged and skipped. The first plugin of a name wins; later ones are rejected. A file is
// opened only when it and its directory are trusted and, with a non-empty `allowlist`, its SHA-256 is the
// one listed for the name the plugin then reports.
std::vector<PluginCandidate> load_plugins(const std::vector<std::string>& dirs, const DigestAllowlist& allowlist = {});

// Device kind name for messages ("cpu", "cuda").
const char* device_kind_name(int kind);

}  // namespace llm
