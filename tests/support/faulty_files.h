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

#include "common/error.h"
#include "io/file_reader.h"

namespace fp4serve::test {

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
    return [this](const std::filesystem::path& path) -> std::unique_ptr<FileReader> {
      return std::make_unique<Reader>(*this, open_posix_file(path));
    };
  }

 private:
  class Reader final : public FileReader {
   public:
    Reader(FaultyFiles& files, std::unique_ptr<FileReader> file) : files_(files), file_(std::move(file)) {}
    const std::string& path() const override { return file_->path(); }
    uint64_t size() const override { return file_->size(); }
    std::optional<std::string> change_since_open() const override { return file_->change_since_open(); }
    size_t pread_some(std::span<uint8_t> dst, uint64_t offset) const override {
      const size_t limit = files_.before_read(path(), offset);
      return file_->pread_some(limit == 0 ? dst : dst.first(std::min(limit, dst.size())), offset);
    }

   private:
    FaultyFiles& files_;
    std::unique_ptr<FileReader> file_;
  };

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
