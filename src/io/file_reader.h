// Positional reads of a file behind a small interface, so tests can inject faults (short reads, I/O errors,
// truncation, files changed mid-read). read_exact either fills the whole destination or throws an Error naming the
// file and offset. PosixFile is thread-safe (pread on one descriptor); the descriptor lives as long as the object.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

namespace fp4serve {

class FileReader {
 public:
  virtual ~FileReader() = default;
  virtual const std::string& path() const = 0;
  virtual uint64_t size() const = 0;  // fixed when the file was opened
  // Reads up to dst.size() bytes at offset, like POSIX pread: returns the count read, 0 at end of file, and may
  // return fewer bytes than asked. Throws Error on an I/O error.
  virtual size_t pread_some(std::span<uint8_t> dst, uint64_t offset) const = 0;

  // What happened to the file since it was opened, if anything that can change what it holds: "modified in place
  // (...)" or "replaced by another file". A deleted file is not a change: the open descriptor still reads it whole.
  virtual std::optional<std::string> change_since_open() const = 0;

  // Fills dst from offset, retrying short reads; throws if the file ends early or a read fails.
  void read_exact(std::span<uint8_t> dst, uint64_t offset) const;
};

// Opens a file for reading; each component that reads files takes one so tests can substitute a faulty reader.
using FileOpener = std::function<std::unique_ptr<FileReader>(const std::filesystem::path&)>;

class PosixFile final : public FileReader {
 public:
  explicit PosixFile(const std::filesystem::path& path);  // throws naming the path if it cannot be opened
  ~PosixFile() override;
  PosixFile(const PosixFile&) = delete;
  PosixFile& operator=(const PosixFile&) = delete;

  const std::string& path() const override { return path_; }
  uint64_t size() const override { return size_; }
  size_t pread_some(std::span<uint8_t> dst, uint64_t offset) const override;
  std::optional<std::string> change_since_open() const override;
  int fd() const { return fd_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  uint64_t device_ = 0, inode_ = 0;
  int64_t mtime_ns_ = 0;  // a rewrite of the same size shows here
};

std::unique_ptr<FileReader> open_posix_file(const std::filesystem::path& path);

}  // namespace fp4serve
