#include "log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "error.h"

namespace llm {

spdlog::logger& log() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_color_mt("llm");
    l->set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
    return l;
  }();
  return *logger;
}

void set_log_level(const std::string& level) {
  auto parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off") {
    fail("log level '{}' is not one of trace, debug, info, warn, error, off", level);
  }
  log().set_level(parsed);
}

}  // namespace llm
