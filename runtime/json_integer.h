// Integers read from JSON files as they are written. nlohmann's get<int>() takes true as 1, truncates 2.5
// and wraps 4294967296 to 0, so a value a user wrote wrongly would pass as another one; checked reads ask
// this first and name the value as written when it says no.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>

namespace llm {

// Whether `v` is a JSON integer (not a float, bool or string) in [lo, hi].
inline bool json_integer_within(const nlohmann::json& v, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned()) {  // non-negative as parsed, possibly past INT64_MAX
    const uint64_t u = v.get<uint64_t>();
    return hi >= 0 && u <= static_cast<uint64_t>(hi) && (lo <= 0 || u >= static_cast<uint64_t>(lo));
  }
  const int64_t i = v.get<int64_t>();
  return i >= lo && i <= hi;
}

}  // namespace llm
