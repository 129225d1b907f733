// What a plugin file must satisfy before the loader opens it: loading a shared library runs its code in
// this process, so the file and the directory it sits in must be writable only by the user running us
// (or root), and, when the config lists digests (plugins.require_digest), the file's SHA-256 must be
// listed. Each refusal names the file and the rule it broke.
#pragma once

#include <map>
#include <string>

namespace llm {

// Why `path` (a plugin file) or its directory may not be trusted, or "" when both may:
//  - owned by a user other than the effective user or root;
//  - writable by other users (o+w), or by a group other than the effective group (g+w).
std::string untrusted_file_reason(const std::string& path);

// Lower-case hex SHA-256 of the file's bytes; throws llm::Error naming the file when it cannot be read.
std::string sha256_file(const std::string& path);

// True when `digest` has the form of a SHA-256 in hex (64 characters 0-9, a-f, A-F).
bool is_sha256_hex(const std::string& digest);

// Plugin names to the SHA-256 their file must have. Empty: no allowlist, any trusted file loads.
using DigestAllowlist = std::map<std::string, std::string>;

}  // namespace llm
