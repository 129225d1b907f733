// A read-only memory mapping of a whole file (weights are paged in on use, never copied).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace llm {

class MappedFile {
 public:
  MappedFile() = default;
  // Maps `path` read-only; throws llm::Error naming the file when it cannot be opened or mapped.
  explicit MappedFile(const std::string& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace llm
