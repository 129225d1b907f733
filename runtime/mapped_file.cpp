#include "mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "error.h"

namespace llm {

namespace {

// Closes the descriptor on every path out of the constructor (the mapping outlives it).
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

MappedFile::MappedFile(const std::string& path, LoadMode mode) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    fail("{}: cannot open: {}", path, std::strerror(err));
  }
  FdCloser closer{fd};

  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    fail("{}: cannot stat: {}", path, std::strerror(err));
  }
  if (S_ISDIR(st.st_mode)) fail("{}: is a directory, expected a file", path);
  if (!S_ISREG(st.st_mode)) fail("{}: is not a regular file", path);
  if (st.st_size == 0) fail("{}: is empty (0 bytes)", path);

  const auto size = static_cast<std::size_t>(st.st_size);
  if (mode == LoadMode::Memory) {
    constexpr std::size_t kHuge = std::size_t{2} << 20;
    const std::size_t rounded = (size + kHuge - 1) / kHuge * kHuge;
    void* mem = ::mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
      int err = errno;
      fail("{}: cannot allocate {} bytes to load it into memory: {}", path, rounded, std::strerror(err));
    }
    (void)::madvise(mem, rounded, MADV_HUGEPAGE);  // a hint: without THP this is a plain copy
    for (std::size_t done = 0; done < size;) {
      const ssize_t n = ::pread(fd, static_cast<uint8_t*>(mem) + done, size - done, static_cast<off_t>(done));
      if (n <= 0) {
        int err = n < 0 ? errno : EIO;
        ::munmap(mem, rounded);
        fail("{}: read failed at byte {} of {}: {}", path, done, size, std::strerror(err));
      }
      done += static_cast<std::size_t>(n);
    }
    (void)::mprotect(mem, rounded, PROT_READ);
    data_ = static_cast<const uint8_t*>(mem);
    size_ = size;
    mapped_size_ = rounded;
    return;
  }
  void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (mapped == MAP_FAILED) {
    int err = errno;
    fail("{}: cannot mmap {} bytes: {}", path, size, std::strerror(err));
  }
  // Only a hint: failure just means no read-ahead.
  (void)::madvise(mapped, size, MADV_WILLNEED);
  data_ = static_cast<const uint8_t*>(mapped);
  size_ = size;
  mapped_size_ = size;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_size_(std::exchange(other.mapped_size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), mapped_size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_size_ = std::exchange(other.mapped_size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), mapped_size_);
}

}  // namespace llm
