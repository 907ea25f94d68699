#include "io/file_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace fp4serve {

void FileReader::read_exact(std::span<uint8_t> dst, uint64_t offset) const {
  size_t done = 0;
  while (done < dst.size()) {
    size_t got = pread_some(dst.subspan(done), offset + done);
    FP4_CHECK(got > 0, "{}: file ends at byte {} but {} bytes were expected from offset {} (truncated or changed "
              "while reading?)", path(), offset + done, dst.size(), offset);
    done += got;
  }
}

PosixFile::PosixFile(const std::filesystem::path& path) : path_(path.string()) {
  fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  FP4_CHECK(fd_ >= 0, "{}: cannot open: {}", path_, std::strerror(errno));
  struct stat st {};
  const bool stat_ok = ::fstat(fd_, &st) == 0;
  const int stat_errno = errno;
  if (!stat_ok || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    FP4_CHECK(stat_ok, "{}: cannot stat: {}", path_, std::strerror(stat_errno));
    fail("{}: not a regular file (a directory?)", path_);
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

PosixFile::~PosixFile() {
  if (fd_ >= 0) ::close(fd_);
}

size_t PosixFile::pread_some(std::span<uint8_t> dst, uint64_t offset) const {
  while (true) {
    ssize_t got = ::pread(fd_, dst.data(), dst.size(), static_cast<off_t>(offset));
    if (got >= 0) return static_cast<size_t>(got);
    FP4_CHECK(errno == EINTR, "{}: read of {} bytes at offset {} failed: {}", path_, dst.size(), offset,
              std::strerror(errno));
  }
}

std::unique_ptr<FileReader> open_posix_file(const std::filesystem::path& path) {
  return std::make_unique<PosixFile>(path);
}

}  // namespace fp4serve
