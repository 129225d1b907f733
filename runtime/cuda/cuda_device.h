// Which GPU the runtime can use, and why not when it cannot.
#pragma once

#include <llm/attention_backend.h>

#include <string>

namespace llm::cuda {

struct DeviceStatus {
  bool usable = false;
  std::string reason;  // when not usable: why (no driver, no device, too old, ...)
  int index = 0;
  std::string name;
  int compute_major = 0, compute_minor = 0;
  size_t total_memory = 0, free_memory = 0;
  int multiprocessors = 0;
};

// Probes device `index` (never throws): a machine without a GPU or driver gets usable = false and a reason.
DeviceStatus probe_device(int index = 0);

// The device as the SDK describes it to plugins (`status` must outlive the returned struct's name).
llm_device_info device_info(const DeviceStatus& status);

}  // namespace llm::cuda
