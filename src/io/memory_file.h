// A FileReader over bytes already in memory (a file's contents handed over whole, as the fuzz targets do), so
// the readers that take a FileReader parse them exactly as they parse a file on disk.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "io/file_reader.h"

namespace fp4serve {

class MemoryFile final : public FileReader {
 public:
  // `bytes` must outlive the reader; `path` names it in errors.
  MemoryFile(std::string path, std::span<const uint8_t> bytes) : path_(std::move(path)), bytes_(bytes) {}

  const std::string& path() const override { return path_; }
  uint64_t size() const override { return bytes_.size(); }
  size_t pread_some(std::span<uint8_t> dst, uint64_t offset) const override;
  std::optional<std::string> change_since_open() const override { return std::nullopt; }  // the bytes are fixed

 private:
  std::string path_;
  std::span<const uint8_t> bytes_;
};

}  // namespace fp4serve
