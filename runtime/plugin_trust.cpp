#include "plugin_trust.h"

#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "error.h"

namespace fs = std::filesystem;

namespace llm {
namespace {

std::string mode_octal(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// The rule `what` (the plugin file or its directory) at `path` breaks, or "".
std::string check_one(const std::string& what, const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return what + " " + path + ": cannot stat: " + std::strerror(errno);
  const uid_t me = ::geteuid();
  if (st.st_uid != me && st.st_uid != 0)
    return what + " " + path + " is owned by uid " + std::to_string(st.st_uid) +
           ", neither the user running llm-runner (uid " + std::to_string(me) + ") nor root";
  if (st.st_mode & S_IWOTH)
    return what + " " + path + " is writable by other users (mode " + mode_octal(st.st_mode) + ")";
  if ((st.st_mode & S_IWGRP) && st.st_gid != ::getegid())
    return what + " " + path + " is writable by group " + std::to_string(st.st_gid) + ", not the user's own (mode " +
           mode_octal(st.st_mode) + ")";
  return "";
}

}  // namespace

std::string untrusted_file_reason(const std::string& path) {
  std::error_code ec;
  fs::path dir = fs::absolute(path, ec).parent_path();
  if (std::string r = check_one("plugin file", path); !r.empty()) return r;
  return check_one("plugin directory", dir.string());
}

std::string sha256_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) fail("{}: cannot open to compute its SHA-256: {}", path, std::strerror(errno));
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) fail("{}: cannot start a SHA-256", path);
  std::vector<unsigned char> buf(1 << 16);
  for (size_t n; (n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0;) EVP_DigestUpdate(ctx.get(), buf.data(), n);
  if (std::ferror(f.get())) fail("{}: read error while computing its SHA-256", path);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) out += {hex[md[i] >> 4], hex[md[i] & 15]};
  return out;
}

bool is_sha256_hex(const std::string& digest) {
  return digest.size() == 64 && digest.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos;
}

}  // namespace llm
