#include "run_config.h"

#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "backend_chain.h"
#include "error.h"

namespace fs = std::filesystem;

namespace llm {
namespace {

// Walks one YAML mapping, remembering which keys were read so the rest can be reported as unknown.
class Section {
 public:
  Section(const YAML::Node& node, std::string path, std::string source)
      : node_(node), path_(std::move(path)), source_(std::move(source)) {
    if (node_ && !node_.IsMap()) fail("{}: '{}' must be a mapping of keys to values{}", source_, path_, where(node_));
  }

  template <typename T>
  void read(const char* key, T& out, const char* expected) {
    known_.insert(key);
    if (!node_ || !node_[key]) return;
    const YAML::Node value = node_[key];
    try {
      if (!value.IsScalar()) throw YAML::Exception(value.Mark(), "not a scalar");
      out = value.as<T>();
    } catch (const YAML::Exception&) {
      fail("{}: '{}' must be {}, got {}{}", source_, name(key), expected, show(value), where(value));
    }
  }
  void read_list(const char* key, std::vector<std::string>& out) {
    known_.insert(key);
    if (!node_ || !node_[key]) return;
    const YAML::Node value = node_[key];
    if (!value.IsSequence())
      fail("{}: '{}' must be a list of strings, got {}{}", source_, name(key), show(value), where(value));
    out.clear();
    for (const auto& item : value) {
      if (!item.IsScalar()) fail("{}: '{}' must be a list of strings{}", source_, name(key), where(item));
      out.push_back(item.as<std::string>());
    }
  }
  void read_digests(const char* key, DigestAllowlist& out) {
    known_.insert(key);
    if (!node_ || !node_[key]) return;
    const YAML::Node value = node_[key];
    if (!value.IsMap())
      fail("{}: '{}' must be a mapping of plugin names to SHA-256 digests, got {}{}", source_, name(key), show(value),
           where(value));
    out.clear();
    for (const auto& kv : value) {
      const std::string plugin = kv.first.as<std::string>();
      const std::string digest = kv.second.IsScalar() ? kv.second.Scalar() : "";
      if (!is_sha256_hex(digest))
        fail("{}: '{}.{}' must be a SHA-256 digest (64 hex digits, as sha256sum prints), got {}{}", source_, name(key),
             plugin, show(kv.second), where(kv.second));
      std::string lower = digest;
      for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      out[plugin] = lower;
    }
  }
  Section child(const char* key) {
    known_.insert(key);
    return Section(node_ ? node_[key] : YAML::Node(), name(key), source_);
  }
  // Fails on the first key that was never read.
  void reject_unknown() const {
    if (!node_) return;
    for (const auto& kv : node_) {
      const std::string key = kv.first.as<std::string>();
      if (!known_.count(key)) {
        std::string expected;
        for (const auto& k : known_) expected += (expected.empty() ? "" : ", ") + k;
        fail("{}: unknown key '{}'{} (expected one of: {})", source_, name(key.c_str()), where(kv.first), expected);
      }
    }
  }
  std::string name(const char* key) const { return path_.empty() ? key : path_ + "." + key; }
  const std::string& source() const { return source_; }

 private:
  static std::string where(const YAML::Node& n) {
    const YAML::Mark m = n.Mark();
    return m.is_null() ? "" : fmt::format(" (line {}, column {})", m.line + 1, m.column + 1);
  }
  static std::string show(const YAML::Node& n) {
    if (n.IsScalar()) return "'" + n.Scalar() + "'";
    return n.IsSequence() ? "a list" : n.IsMap() ? "a mapping" : "nothing";
  }
  YAML::Node node_;
  std::string path_, source_;
  std::set<std::string> known_;
};

template <typename T>
void check_range(const Section& s, const char* key, T value, T lo, T hi, const char* expected) {
  if (value < lo || value > hi) fail("{}: '{}' must be {}, got {}", s.source(), s.name(key), expected, value);
}

std::string relative_to(const std::string& path, const std::string& base) {
  if (path.empty() || base.empty() || fs::path(path).is_absolute()) return path;
  return (fs::path(base) / path).lexically_normal().string();
}

}  // namespace

RunConfig parse_run_config(const std::string& yaml_text, const std::string& source, const std::string& base_dir) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    fail("{}: YAML syntax error at line {}, column {}: {}", source, e.mark.line + 1, e.mark.column + 1, e.msg);
  }
  RunConfig c;
  if (!root || root.IsNull()) return c;
  Section top(root, "", source);
  top.read("models_dir", c.models_dir, "a directory path");
  c.models_dir = relative_to(c.models_dir, base_dir);

  Section model = top.child("model");
  model.read("path", c.model, "a checkpoint path");
  model.read("tokenizer", c.tokenizer, "a tokenizer path");
  model.read("load", c.load, "'mmap' or 'memory'");
  if (c.load != "mmap" && c.load != "memory")
    fail("{}: 'model.load' must be 'mmap' (map the file) or 'memory' (read it into huge-page memory), got '{}'", source,
         c.load);
  model.read("max_context", c.max_context, "an integer (0 = the model's own limit)");
  check_range(model, "max_context", c.max_context, 0, 1 << 22, "between 0 and 4194304");
  model.reject_unknown();

  Section gen = top.child("generation");
  gen.read("prompt", c.prompt, "a string");
  gen.read("max_tokens", c.max_tokens, "an integer >= 1");
  check_range(gen, "max_tokens", c.max_tokens, 1, 1 << 22, "an integer >= 1");
  gen.read("temperature", c.sampling.temperature, "a number >= 0 (0 = greedy)");
  check_range(gen, "temperature", c.sampling.temperature, 0.0f, 100.0f, "a number between 0 and 100 (0 = greedy)");
  gen.read("top_k", c.sampling.top_k, "an integer >= 0 (0 = off)");
  check_range(gen, "top_k", c.sampling.top_k, 0, std::numeric_limits<int>::max(), "an integer >= 0 (0 = off)");
  gen.read("top_p", c.sampling.top_p, "a number in (0, 1]");
  if (!(c.sampling.top_p > 0.0f && c.sampling.top_p <= 1.0f))
    fail("{}: 'generation.top_p' must be a number in (0, 1], got {}", source, c.sampling.top_p);
  gen.read("seed", c.sampling.seed, "a non-negative integer");
  gen.read("add_bos", c.add_bos, "true or false");
  gen.reject_unknown();

  Section run = top.child("runtime");
  run.read("device", c.device, "one of cpu, cuda, auto");
  if (c.device != "cpu" && c.device != "cuda" && c.device != "auto")
    fail("{}: 'runtime.device' must be one of cpu, cuda, auto; got '{}'", source, c.device);
  run.read("dtype", c.dtype, "one of bf16, fp16, fp32");
  if (c.dtype != "bf16" && c.dtype != "fp16" && c.dtype != "fp32")
    fail("{}: 'runtime.dtype' must be one of bf16, fp16, fp32; got '{}'", source, c.dtype);
  run.read("threads", c.threads, "an integer >= 0 (0 = all hardware threads)");
  check_range(run, "threads", c.threads, 0, 1024, "between 0 and 1024 (0 = all hardware threads)");
  run.reject_unknown();

  Section backends = top.child("backends");
  backends.read_list("order", c.backend_order);
  backends.read_list("plugin_dirs", c.plugin_dirs);
  backends.read_list("fail", c.fail_backend);
  backends.read_list("check_output", c.check_output);
  for (const auto& f : c.fail_backend) {
    try {
      parse_injected_failure(f);
    } catch (const Error& e) {
      fail("{}: 'backends.fail': {}", source, e.what());
    }
  }
  for (auto& dir : c.plugin_dirs) dir = relative_to(dir, base_dir);
  backends.reject_unknown();

  // plugins.require_digest: a mapping of plugin names to the SHA-256 (hex) their file must have.
  Section plugins = top.child("plugins");
  plugins.read_digests("require_digest", c.require_digest);
  plugins.reject_unknown();

  Section parallel = top.child("parallel");
  parallel.read("tensor", c.tensor_parallel, "an integer >= 1 (ranks the model is split over)");
  check_range(parallel, "tensor", c.tensor_parallel, 1, 64, "between 1 and 64");
  parallel.reject_unknown();

  Section logging = top.child("logging");
  logging.read("level", c.log_level, "one of trace, debug, info, warn, error, off");
  static const std::set<std::string> levels = {"trace", "debug", "info", "warn", "error", "off"};
  if (!levels.count(c.log_level))
    fail("{}: 'logging.level' must be one of trace, debug, info, warn, error, off; got '{}'", source, c.log_level);
  logging.reject_unknown();

  top.reject_unknown();
  return c;
}

RunConfig load_run_config(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) fail("config {}: is a directory, expected a YAML file", path);
  std::ifstream in(path);
  if (!in) fail("config {}: cannot open ({})", path, std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  return parse_run_config(text.str(), path, fs::path(path).parent_path().string());
}

void validate_run_config(const RunConfig& c) {
  if (c.model.empty()) fail("config: 'model.path' (or --model) is required");
}

}  // namespace llm
