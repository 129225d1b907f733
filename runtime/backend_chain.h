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

// Probes `plugin`, first in an isolated child process (isolated_probe.h: a crash or hang there is a "no"
// naming it), then here; a probe that returns an error counts as "not supported" with its message.
ProbeVerdict probe_plugin(const std::shared_ptr<Plugin>& plugin, const llm_device_info& device,
                          const llm_attention_shape& shape);

// Moves one attention call to a backend on the host and its output back: how a GPU model lets CPU backends
// take over (a host mirror of the KV cache in fp32, the queries down, the output up).
class AttentionBridge {
 public:
  virtual ~AttentionBridge() = default;
  // The same call with every tensor in host memory, fp32 (valid until the next call).
  virtual const llm_attention_args& to_host(const llm_attention_args& args) = 0;
  // Copies the host call's output back into args.out.
  virtual void from_host(const llm_attention_args& args) = 0;
};

// A device that backends of another kind than the model's may serve through an AttentionBridge: the host
// device and the fp32 shape the bridged calls will have.
struct BridgeTarget {
  llm_device_info device;
  llm_attention_shape shape;
};

// Failure injection (for drills and tests): the backend named `backend` fails its `call`-th call (1-based,
// counting prefill and decode calls on every layer) as if it had returned an error.
struct InjectedFailure {
  std::string backend;
  long call = 0;
};
// Parses "NAME@CALL" (e.g. "mha_cuda@40"); throws llm::Error naming the text otherwise.
InjectedFailure parse_injected_failure(const std::string& text);

class BackendChain {
 public:
  // Builds the chain. `order`: backend names in preference order; empty means the default order
  // followed by any other loaded plugin by descending priority. A named backend that was not found
  // or that probes "no" is logged with the reason and left out. Backends of another device kind than
  // `device` are probed against `bridge` when given (and then need set_bridge before they serve), else
  // left out. Throws llm::Error naming every candidate and why it was rejected when no backend is left.
  // `checked`: backends whose results are checked (output poisoned with NaN before each call, every
  // element required finite after it: a NaN or an unwritten element fails the call like an error
  // status); results in host memory only, so a GPU backend is checked when it serves through the bridge.
  BackendChain(const std::vector<PluginCandidate>& candidates, const std::vector<std::string>& order,
               const llm_device_info& device, const llm_attention_shape& shape, const BridgeTarget* bridge = nullptr,
               std::vector<InjectedFailure> failures = {}, const std::vector<std::string>& checked = {});
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
  // Capabilities of the backend that serves calls now (e.g. graph safety; 0 when it is bridged, since a
  // bridged call synchronizes with the host).
  uint64_t active_capabilities() const;
  // True when a failure is injected: callers must then make every call through the chain (a replayed CUDA
  // graph would bypass the count).
  bool has_injected_failures() const;
  // How calls reach backends of the other device kind; must outlive the chain's calls.
  void set_bridge(AttentionBridge* bridge) { bridge_ = bridge; }
  // Around the capture of calls into a CUDA graph. begin_capture opens the serving backend's context
  // first (context_create may allocate, which a capturing stream forbids; a failure there takes the
  // next backend, as a failed call does). While capturing, a backend that fails is left as usual, but
  // the call throws instead of trying the next one inside the capture: the caller ends the capture and
  // makes the call again outside it.
  void begin_capture();
  void end_capture() { capturing_ = false; }

 private:
  struct Link {
    ProbeVerdict verdict;
    llm_device_info device;  // what it was probed against and computes on
    llm_attention_shape shape;
    bool bridged = false;  // serves the model's data through the bridge
    llm_backend_context* ctx = nullptr;
    bool failed = false;
    long calls = 0;
    long fail_at = 0;    // injected failure on this call (0: none)
    bool check = false;  // poison the output before a call, require it finite after
  };
  void call(const llm_attention_args& args, bool decode);
  std::string try_link(Link& link, const llm_attention_args& args, bool decode);
  std::string open_context(Link& link);  // "" once link.ctx exists, else why not
  // Logs why `link` failed in `where` (at `layer`, where >= 0); the next backend serves from here.
  void leave(Link& link, const char* where, int layer, const std::string& error);

  llm_device_info device_;
  llm_attention_shape shape_;
  std::vector<Link> links_;
  size_t active_ = 0;
  bool capturing_ = false;
  std::vector<std::string> served_by_;
  AttentionBridge* bridge_ = nullptr;
};

}  // namespace llm
