#include "backend_chain.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

#include "error.h"
#include "isolated_probe.h"
#include "log.h"

namespace llm {

const std::vector<std::string>& default_backend_order() {
  static const std::vector<std::string> order = {"flash_cuda", "mha_cuda", "mha_cpu"};
  return order;
}

ProbeVerdict probe_plugin(const std::shared_ptr<Plugin>& plugin, const llm_device_info& device,
                          const llm_attention_shape& shape) {
  ProbeVerdict v;
  v.plugin = plugin;
  if (std::string failure = isolated_probe_failure(plugin->iface(), device, shape, probe_time_limit_ms());
      !failure.empty()) {
    v.reason = failure;
    return v;
  }
  llm_probe_result result{};
  result.struct_size = sizeof(result);
  llm_status status = plugin->iface().probe(&device, &shape, &result);
  result.reason[sizeof(result.reason) - 1] = '\0';
  if (status != LLM_OK) {
    v.reason = "probe failed with status " + std::to_string(status) + (result.reason[0] ? ": " : "") + result.reason;
  } else if (!result.supported) {
    v.reason = result.reason[0] ? result.reason : "probe said no and gave no reason";
  } else if (plugin->device_kind() != device.kind) {
    v.reason = std::string("computes on ") + device_kind_name(plugin->device_kind()) + " but the model runs on " +
               device_kind_name(device.kind);
  } else {
    v.supported = true;
    v.capabilities = result.capabilities;
  }
  return v;
}

InjectedFailure parse_injected_failure(const std::string& text) {
  const auto at = text.rfind('@');
  InjectedFailure f;
  if (at != std::string::npos && at > 0) {
    f.backend = text.substr(0, at);
    try {
      size_t used = 0;
      f.call = std::stol(text.substr(at + 1), &used);
      if (used != text.size() - at - 1) f.call = 0;
    } catch (const std::exception&) {
      f.call = 0;
    }
  }
  if (f.backend.empty() || f.call < 1)
    fail("injected failure '{}': expected NAME@CALL with CALL >= 1 (e.g. mha_cuda@40)", text);
  return f;
}

BackendChain::BackendChain(const std::vector<PluginCandidate>& candidates, const std::vector<std::string>& order,
                           const llm_device_info& device, const llm_attention_shape& shape, const BridgeTarget* bridge,
                           std::vector<InjectedFailure> failures, const std::vector<std::string>& checked)
    : device_(device), shape_(shape) {
  std::vector<std::shared_ptr<Plugin>> loaded;
  for (const auto& c : candidates)
    if (c.plugin) loaded.push_back(c.plugin);
  auto find = [&](const std::string& name) {
    auto it = std::find_if(loaded.begin(), loaded.end(), [&](auto& p) { return p->name() == name; });
    return it == loaded.end() ? nullptr : *it;
  };

  std::vector<std::string> names = order.empty() ? default_backend_order() : order;
  if (order.empty()) {  // plugins the default order does not name follow, best priority first
    std::vector<std::shared_ptr<Plugin>> extra;
    for (auto& p : loaded)
      if (std::find(names.begin(), names.end(), p->name()) == names.end()) extra.push_back(p);
    std::stable_sort(extra.begin(), extra.end(),
                     [](auto& a, auto& b) { return a->iface().priority > b->iface().priority; });
    for (auto& p : extra) names.push_back(p->name());
  }

  std::string rejected;
  for (const auto& name : names) {
    auto plugin = find(name);
    if (!plugin) {
      log().info("backend '{}': not in the chain (no plugin of that name was loaded)", name);
      rejected += "\n  " + name + ": no plugin of that name was loaded";
      continue;
    }
    // A backend of the other device kind serves through the bridge, probed against the bridge's device.
    const bool bridged = bridge && plugin->device_kind() != device.kind && plugin->device_kind() == bridge->device.kind;
    const llm_device_info& dev = bridged ? bridge->device : device;
    const llm_attention_shape& shp = bridged ? bridge->shape : shape;
    ProbeVerdict v = probe_plugin(plugin, dev, shp);
    if (!v.supported) {
      log().info("backend '{}': not in the chain: {}", name, v.reason);
      rejected += "\n  " + name + " (" + plugin->path() + "): " + v.reason;
      continue;
    }
    Link link{std::move(v), dev, shp, bridged};
    for (const auto& f : failures)
      if (f.backend == name) link.fail_at = f.call;
    if (link.fail_at) log().warn("backend '{}' will fail on call {} (failure injection)", name, link.fail_at);
    link.check = std::find(checked.begin(), checked.end(), name) != checked.end();
    if (link.check && link.device.kind != LLM_DEVICE_CPU)
      log().warn("backend '{}': its results stay in {} memory, so backends.check_output cannot check them", name,
                 device_kind_name(link.device.kind));
    else if (link.check)
      log().info("backend '{}': results checked (poisoned before each call, required finite after)", name);
    links_.push_back(std::move(link));
  }
  for (const auto& c : candidates) {
    if (!c.plugin)
      rejected += "\n  " + c.path + ": " + c.rejection;
    else if (std::find(names.begin(), names.end(), c.plugin->name()) == names.end())
      rejected += "\n  " + c.plugin->name() + " (" + c.path + "): loaded, but not named in backends.order / --backends";
  }
  if (links_.empty())
    fail("no usable attention backend for this model on {} (head_dim {}, {} q heads, {} kv heads); candidates:{}",
         device.name, shape.head_dim, shape.num_q_heads, shape.num_kv_heads,
         rejected.empty() ? std::string("\n  (no plugins were found)") : rejected);
  std::vector<std::string> shown;
  for (const auto& l : links_)
    shown.push_back(l.verdict.plugin->name() +
                    (l.bridged ? std::string(" (via ") + device_kind_name(l.device.kind) + ")" : ""));
  log().info("attention backend chain: {}", fmt::join(shown, " -> "));
}

BackendChain::~BackendChain() {
  for (auto& link : links_)
    if (link.ctx) link.verdict.plugin->iface().context_destroy(link.ctx);
}

std::string BackendChain::active_name() const {
  return active_ < links_.size() ? links_[active_].verdict.plugin->name() : "none";
}

std::vector<std::string> BackendChain::names() const {
  std::vector<std::string> out;
  for (const auto& link : links_) out.push_back(link.verdict.plugin->name());
  return out;
}

bool BackendChain::has_injected_failures() const {
  return std::any_of(links_.begin(), links_.end(), [](const Link& l) { return l.fail_at > 0; });
}

uint64_t BackendChain::active_capabilities() const {
  if (active_ >= links_.size() || links_[active_].bridged) return 0;
  return links_[active_].verdict.capabilities;
}

namespace {

// f(row, token, head, head_dim) over every output row of a host fp32 call.
template <typename F>
void for_each_output_row(const llm_attention_args& a, const llm_attention_shape& shape, F&& f) {
  for (int t = 0; t < a.total_q_tokens; ++t)
    for (int h = 0; h < shape.num_q_heads; ++h)
      f(static_cast<float*>(a.out) + t * a.out_token_stride + h * a.out_head_stride, t, h, shape.head_dim);
}

}  // namespace

// Runs the call on one link; returns "" on success, else the failure message.
std::string BackendChain::try_link(Link& link, const llm_attention_args& args, bool decode) {
  const llm_backend_iface& t = link.verdict.plugin->iface();
  if (++link.calls == link.fail_at) return "injected failure on call " + std::to_string(link.calls);
  if (link.bridged && !bridge_) return "computes on another device and the model offers no bridge";
  if (std::string error = open_context(link); !error.empty()) return error;
  if (decode && !(link.verdict.capabilities & LLM_CAP_DECODE)) return "does not serve decode";
  if (!decode && !(link.verdict.capabilities & LLM_CAP_PREFILL)) return "does not serve prefill";
  const llm_attention_args& a = link.bridged ? bridge_->to_host(args) : args;
  const bool check = link.check && link.device.kind == LLM_DEVICE_CPU && a.dtype == LLM_DTYPE_F32;
  if (check) for_each_output_row(a, link.shape, [](float* row, int, int, int n) { std::fill(row, row + n, NAN); });
  llm_status s = decode ? t.decode(link.ctx, &a) : t.prefill(link.ctx, &a);
  if (s != LLM_OK) return "status " + std::to_string(s) + ": " + t.last_error(link.ctx);
  if (check) {
    std::string bad;
    for_each_output_row(a, link.shape, [&](float* row, int token, int head, int n) {
      for (int i = 0; i < n && bad.empty(); ++i)
        if (!std::isfinite(row[i]))
          bad = fmt::format("returned success, but output element (token {}, head {}, component {}) is {} ({})", token,
                            head, i, row[i], std::isnan(row[i]) ? "NaN or never written" : "infinite");
    });
    if (!bad.empty()) return bad;
  }
  if (link.bridged) bridge_->from_host(args);
  return "";
}

std::string BackendChain::open_context(Link& link) {
  if (link.ctx) return "";
  const llm_backend_iface& t = link.verdict.plugin->iface();
  llm_status s = t.context_create(&link.device, &link.shape, &link.ctx);
  if (s == LLM_OK && link.ctx) return "";
  link.ctx = nullptr;
  const char* why = t.last_error(nullptr);
  return "context_create failed (status " + std::to_string(s) + ")" + (why && *why ? std::string(": ") + why : "");
}

void BackendChain::leave(Link& link, const char* where, int layer, const std::string& error) {
  link.failed = true;
  // The next backend that can read the data (on its device, or through the bridge) takes the calls from here.
  size_t next = active_ + 1;
  while (next < links_.size() && links_[next].bridged && !bridge_) ++next;
  log().error("attention backend '{}' failed in {}{}: {}; {}", link.verdict.plugin->name(), where,
              layer >= 0 ? fmt::format(" (layer {})", layer) : std::string(), error,
              next < links_.size() ? "switching to '" + links_[next].verdict.plugin->name() + "' for " +
                                         (layer >= 0 ? "this call and " : "") + "the rest of the session"
                                   : std::string("no backend left in the chain"));
  active_ = next;
}

void BackendChain::begin_capture() {
  while (active_ < links_.size()) {
    Link& link = links_[active_];
    if (link.bridged) break;  // (bridged links are never captured: they synchronize with the host)
    std::string error = open_context(link);
    if (error.empty()) break;
    leave(link, "its setup for a CUDA graph", -1, error);
  }
  capturing_ = true;
}

void BackendChain::call(const llm_attention_args& args, bool decode) {
  while (active_ < links_.size()) {
    Link& link = links_[active_];
    std::string error = try_link(link, args, decode);
    if (error.empty()) {
      if (served_by_.empty() || served_by_.back() != link.verdict.plugin->name())
        served_by_.push_back(link.verdict.plugin->name());
      return;
    }
    leave(link, decode ? "decode" : "prefill", args.layer, error);
    if (capturing_)
      fail("attention backend '{}' failed while a CUDA graph was being captured", link.verdict.plugin->name());
  }
  fail("attention failed: every backend in the chain ({}) has failed; see the log above", fmt::join(names(), ", "));
}

}  // namespace llm
