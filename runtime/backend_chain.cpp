#include "backend_chain.h"

#include <fmt/ranges.h>

#include <algorithm>

#include "error.h"
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

BackendChain::BackendChain(const std::vector<PluginCandidate>& candidates, const std::vector<std::string>& order,
                           const llm_device_info& device, const llm_attention_shape& shape)
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
    ProbeVerdict v = probe_plugin(plugin, device, shape);
    if (!v.supported) {
      log().info("backend '{}': not in the chain: {}", name, v.reason);
      rejected += "\n  " + name + " (" + plugin->path() + "): " + v.reason;
      continue;
    }
    links_.push_back(Link{std::move(v)});
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
  log().info("attention backend chain: {}", fmt::join(this->names(), " -> "));
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

uint64_t BackendChain::common_capabilities() const {
  uint64_t caps = ~0ull;
  for (size_t i = active_; i < links_.size(); ++i) caps &= links_[i].verdict.capabilities;
  return active_ < links_.size() ? caps : 0;
}

// Runs the call on one link; returns "" on success, else the failure message.
std::string BackendChain::try_link(Link& link, const llm_attention_args& args, bool decode) {
  const llm_backend_iface& t = link.verdict.plugin->iface();
  if (!link.ctx) {
    llm_status s = t.context_create(&device_, &shape_, &link.ctx);
    if (s != LLM_OK || !link.ctx) {
      link.ctx = nullptr;
      return "context_create failed (status " + std::to_string(s) + "): " + t.last_error(nullptr);
    }
  }
  if (decode && !(link.verdict.capabilities & LLM_CAP_DECODE)) return "does not serve decode";
  if (!decode && !(link.verdict.capabilities & LLM_CAP_PREFILL)) return "does not serve prefill";
  llm_status s = decode ? t.decode(link.ctx, &args) : t.prefill(link.ctx, &args);
  if (s == LLM_OK) return "";
  return "status " + std::to_string(s) + ": " + t.last_error(link.ctx);
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
    link.failed = true;
    // The next backend that reads memory on the data's device takes this call and the rest.
    size_t next = active_ + 1;
    while (next < links_.size() && links_[next].verdict.plugin->device_kind() != args.kv->device_kind) ++next;
    log().error("attention backend '{}' failed in {} (layer {}): {}; {}", link.verdict.plugin->name(),
                decode ? "decode" : "prefill", args.layer, error,
                next < links_.size() ? "switching to '" + links_[next].verdict.plugin->name() +
                                           "' for this call and the rest of the session"
                                     : std::string("no backend left in the chain"));
    active_ = next;
  }
  fail("attention failed: every backend in the chain ({}) has failed; see the log above", fmt::join(names(), ", "));
}

}  // namespace llm
