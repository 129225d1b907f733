// The attention backend chain: loaded plugins ordered by the config and filtered by probe. A call
// goes to the active backend; when it fails, the chain logs the failure once, moves that call and the
// rest of the session to the next backend that can read the data's device, and carries on. Nothing
// is lost (backends only read the KV cache and write the output, so a retry is exact) and nothing is
// silent.
#pragma once

#include <llm/attention_backend.h>

#include <memory>
#include <string>
#include <vector>

#include "plugin_loader.h"

namespace llm {

// The default order when the config names none: our own backends, fastest first.
const std::vector<std::string>& default_backend_order();

// A plugin's probe verdict for this session's device and shape.
struct ProbeVerdict {
  std::shared_ptr<Plugin> plugin;
  bool supported = false;
  uint64_t capabilities = 0;
  std::string reason;  // why not, when not supported
};

// Probes `plugin`; a probe that returns an error counts as "not supported" with its message.
ProbeVerdict probe_plugin(const std::shared_ptr<Plugin>& plugin, const llm_device_info& device,
                          const llm_attention_shape& shape);

class BackendChain {
 public:
  // Builds the chain. `order`: backend names in preference order; empty means the default order
  // followed by any other loaded plugin by descending priority. A named backend that was not found
  // or that probes "no" is logged with the reason and left out. Throws llm::Error naming every
  // candidate and why it was rejected when no backend is left.
  BackendChain(const std::vector<PluginCandidate>& candidates, const std::vector<std::string>& order,
               const llm_device_info& device, const llm_attention_shape& shape);
  ~BackendChain();
  BackendChain(const BackendChain&) = delete;
  BackendChain& operator=(const BackendChain&) = delete;

  void prefill(const llm_attention_args& args) { call(args, false); }
  void decode(const llm_attention_args& args) { call(args, true); }

  // Name of the backend that serves calls now.
  std::string active_name() const;
  // Names of all backends in the chain, in order.
  std::vector<std::string> names() const;
  // Backends that served at least one call, in the order they took over.
  const std::vector<std::string>& served_by() const { return served_by_; }
  // Capabilities every remaining backend shares (e.g. graph safety).
  uint64_t common_capabilities() const;

 private:
  struct Link {
    ProbeVerdict verdict;
    llm_backend_context* ctx = nullptr;
    bool failed = false;
  };
  void call(const llm_attention_args& args, bool decode);
  std::string try_link(Link& link, const llm_attention_args& args, bool decode);

  llm_device_info device_;
  llm_attention_shape shape_;
  std::vector<Link> links_;
  size_t active_ = 0;
  std::vector<std::string> served_by_;
};

}  // namespace llm
