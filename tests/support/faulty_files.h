// An injectable I/O layer for tests (LoadOptions::open_file, CheckpointOptions::open_file): real files underneath,
// with faults armed by read number. Reads are counted across every file it opened, from 1 after each arm(); the
// count and the faults are shared by all its readers and safe to use from several threads (an engine thread reads
// while the test thread arms). It must outlive the readers it opened.
#pragma once
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "common/error.h"
#include "io/file_reader.h"

namespace fp4serve::test {

// Opens real files whose every read goes through `read(file, dst, offset)` (which reads `file` itself, or fails):
// the one wrapper the tests' injected I/O faults are built on.
using InterceptedRead = std::function<size_t(const FileReader& file, std::span<uint8_t> dst, uint64_t offset)>;

inline FileOpener intercepting_opener(InterceptedRead read) {
  class Intercepted final : public FileReader {
   public:
    Intercepted(std::unique_ptr<FileReader> file, const InterceptedRead& read) : file_(std::move(file)), read_(read) {}
    const std::string& path() const override { return file_->path(); }
    uint64_t size() const override { return file_->size(); }
    std::optional<std::string> change_since_open() const override { return file_->change_since_open(); }
    size_t pread_some(std::span<uint8_t> dst, uint64_t offset) const override { return read_(*file_, dst, offset); }

   private:
    std::unique_ptr<FileReader> file_;
    InterceptedRead read_;
  };
  return [read = std::move(read)](const std::filesystem::path& path) -> std::unique_ptr<FileReader> {
    return std::make_unique<Intercepted>(open_posix_file(path), read);
  };
}

class FaultyFiles {
 public:
  struct Faults {
    uint64_t fail_read = 0;      // this read fails with EIO (0: none) ...
    bool keep_failing = false;   // ... and so does every later one (a disk gone bad)
    size_t max_read_bytes = 0;   // every read returns at most this many bytes (0: as many as asked)
    uint64_t before_read = 0;    // `action` runs once, just before this read (0: never)
    std::function<void()> action{};
  };

  void arm(Faults faults) {
    std::lock_guard lock(mutex_);
    faults_ = std::move(faults);
    reads_ = 0;
  }
  uint64_t reads() const {
    std::lock_guard lock(mutex_);
    return reads_;
  }

  FileOpener opener() {
    return intercepting_opener([this](const FileReader& file, std::span<uint8_t> dst, uint64_t offset) {
      const size_t limit = before_read(file.path(), offset);
      return file.pread_some(limit == 0 ? dst : dst.first(std::min(limit, dst.size())), offset);
    });
  }

 private:
  // Counts the read, runs the armed action or fails as armed; returns the read size limit (0: none). The action
  // runs outside the lock: it may read files itself.
  size_t before_read(const std::string& path, uint64_t offset) {
    std::function<void()> action{};
    size_t limit = 0;
    {
      std::lock_guard lock(mutex_);
      const uint64_t read = ++reads_;
      const bool failing = faults_.fail_read != 0 && (read == faults_.fail_read ||
                                                      (faults_.keep_failing && read > faults_.fail_read));
      if (failing) fail("{}: read at offset {} failed: {} (injected, read {})", path, offset, std::strerror(EIO), read);
      if (read == faults_.before_read) action = faults_.action;
      limit = faults_.max_read_bytes;
    }
    if (action) action();
    return limit;
  }

  mutable std::mutex mutex_;
  Faults faults_;
  uint64_t reads_ = 0;
};

}  // namespace fp4serve::test
