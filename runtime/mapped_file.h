// A whole file in memory, read-only: memory-mapped (the default: paged in on use, never copied, shared
// with the page cache) or read into private memory backed by transparent huge pages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace llm {

// How weights get into memory. `Memory` costs one copy at load and private memory, and buys fewer TLB
// misses when decode streams weights larger than the caches (2 MiB pages instead of 4 KiB; measured
// +15-20% fp32 decode on stories15M, docs/PERFORMANCE.md). Linux gives file mappings no huge pages.
enum class LoadMode { Mmap, Memory };

class MappedFile {
 public:
  MappedFile() = default;
  // Maps or reads `path`; throws llm::Error naming the file when it cannot be opened, mapped or read.
  explicit MappedFile(const std::string& path, LoadMode mode = LoadMode::Mmap);
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
  std::size_t mapped_size_ = 0;  // what munmap releases (rounded up to huge pages in Memory mode)
};

}  // namespace llm
