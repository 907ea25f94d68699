// safetensors files (8-byte LE header length L, L bytes of JSON, then the data buffer). The reader validates the
// whole header before anything is used: any accepted file has tensors that exactly tile the buffer. The writer
// streams tensors in declaration order into path + ".tmp" and renames on finish(), so no reader sees a half file.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "format/dtype.h"
#include "format/shape.h"
#include "io/file_reader.h"

namespace fp4serve {

// The spec's bound on L (safetensors' own readers use the same): larger headers are rejected unread.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;


struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t offset;  // absolute byte offset of the first byte within the file
  uint64_t nbytes;  // prod(shape) * dtype_size(dtype)
};

class SafetensorsFile {
 public:
  // Memory-maps the file read-only: bytes() gives zero-copy views valid while this object lives.
  static SafetensorsFile open(const std::filesystem::path& path);
  // No mapping: the header is read through `reader`, tensor bytes only through read() (bounded staging buffers,
  // fault injection in tests).
  static SafetensorsFile open_unmapped(std::unique_ptr<FileReader> reader);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const { return reader_->path(); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order (ascending offset)
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool is_mapped() const { return mapping_ != nullptr; }

  const TensorInfo* find(std::string_view name) const;  // nullptr when absent
  const TensorInfo& tensor(std::string_view name) const;  // throws naming the file and tensor when absent

  // Zero-copy view of a tensor's bytes; throws if the file was opened unmapped.
  std::span<const uint8_t> bytes(std::string_view name) const;
  std::span<const uint8_t> bytes(const TensorInfo& tensor) const;

  // Copies dst.size() bytes starting offset_in_tensor bytes into the tensor; works mapped or not; thread-safe.
  void read(const TensorInfo& tensor, uint64_t offset_in_tensor, std::span<uint8_t> dst) const;
  // FileReader::change_since_open of the file.
  std::optional<std::string> change_since_open() const { return reader_->change_since_open(); }

 private:
  struct Mapping;
  SafetensorsFile(std::unique_ptr<FileReader> reader, bool map);

  std::unique_ptr<FileReader> reader_;
  std::unique_ptr<Mapping> mapping_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_by_name_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to be written: its bytes are prod(shape) * dtype_size(dtype).
struct TensorDecl {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t nbytes() const;
};

class SafetensorsWriter {
 public:
  // Validates the declarations (unique names, valid shapes), creates path + ".tmp" and writes the header;
  // tensors are laid out in declaration order.
  SafetensorsWriter(std::filesystem::path path, std::vector<TensorDecl> tensors,
                    std::map<std::string, std::string> metadata = {});
  ~SafetensorsWriter();  // without finish(): removes the temporary file
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // The next tensor in declaration order, whole; a wrong name or size throws.
  void write(std::string_view name, std::span<const uint8_t> bytes);
  // Checks every tensor was written, syncs, and renames the temporary file to `path`.
  void finish();

 private:
  void write_all(std::span<const uint8_t> bytes);
  void abandon() noexcept;

  std::filesystem::path path_;
  std::filesystem::path tmp_path_;
  std::vector<TensorDecl> tensors_;
  size_t next_tensor_ = 0;
  int fd_ = -1;
};

}  // namespace fp4serve
