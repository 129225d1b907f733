// Logging: one spdlog logger named "llm" writing to stderr, so stdout carries only generated text.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace llm {

// The runtime's logger (created on first use, stderr, colour when stderr is a terminal).
spdlog::logger& log();

// Sets the level from "trace", "debug", "info", "warn", "error" or "off"; throws llm::Error otherwise.
void set_log_level(const std::string& level);

}  // namespace llm
