// Runs a plugin's probe once in a child process first, under a time limit, so that a plugin that
// crashes or hangs at probe is rejected with the signal or the timeout named, and the runner lives on.
// The child is a fork of this process: it calls probe, reports through a pipe and exits. Probes get
// everything they need in llm_device_info (attention_backend.h) and must not initialise a device.
#pragma once

#include <llm/attention_backend.h>

#include <string>

namespace llm {

// Milliseconds a probe may take in the child; LLM_PROBE_TIMEOUT_MS overrides (for tests and slow hosts).
int probe_time_limit_ms();

// "" when the probe returned (whatever its verdict) in the child within `limit_ms`; else why not,
// e.g. "probe crashed (signal 11, Segmentation fault) in an isolated child process".
std::string isolated_probe_failure(const llm_backend_iface& iface, const llm_device_info& device,
                                   const llm_attention_shape& shape, int limit_ms);

}  // namespace llm
