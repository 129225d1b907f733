// The runtime's error type: every failure the user can cause (bad file, bad config, bad plugin)
// surfaces as an llm::Error whose message names the file, key or value and what was expected.
// Exceptions stay inside the runtime and apps; nothing crosses the plugin ABI but status codes.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace llm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws llm::Error with a fmt-formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace llm
