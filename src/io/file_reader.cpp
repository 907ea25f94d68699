#include "io/file_reader.h"

#include <fmt/format.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace fp4serve {

namespace {
int64_t mtime_ns(const struct stat& st) { return int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec; }
}  // namespace

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
  device_ = st.st_dev;
  inode_ = st.st_ino;
  mtime_ns_ = mtime_ns(st);
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

std::optional<std::string> PosixFile::change_since_open() const {
  struct stat now {};
  if (::fstat(fd_, &now) != 0) return fmt::format("cannot be checked (fstat: {})", std::strerror(errno));
  if (static_cast<uint64_t>(now.st_size) != size_ || mtime_ns(now) != mtime_ns_)
    return fmt::format("was modified in place (size {} -> {} bytes)", size_, now.st_size);
  struct stat at_path {};
  if (::stat(path_.c_str(), &at_path) != 0) return std::nullopt;  // deleted: the descriptor still reads it whole
  if (at_path.st_dev != device_ || at_path.st_ino != inode_) return "was replaced by another file";
  return std::nullopt;
}

std::unique_ptr<FileReader> open_posix_file(const std::filesystem::path& path) {
  return std::make_unique<PosixFile>(path);
}

}  // namespace fp4serve
