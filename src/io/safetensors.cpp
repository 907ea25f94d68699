#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json_file.h"

namespace fp4serve {

namespace {

constexpr uint64_t kLengthPrefixBytes = 8;
constexpr std::string_view kMetadataKey = "__metadata__";

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string known_dtypes() {
  std::string names;
  for (DType d : {DType::BF16, DType::F16, DType::F32, DType::F64, DType::U8, DType::I8, DType::F8_E4M3, DType::I32,
                  DType::I64})
    names += fmt::format("{}{}", names.empty() ? "" : ", ", dtype_name(d));
  return names;
}

// A JSON array of non-negative integers, as safetensors requires for shape and data_offsets.
std::vector<uint64_t> unsigned_list(const nlohmann::json& value, const std::string& path, const std::string& name,
                                    std::string_view field) {
  FP4_CHECK(value.is_array(), "{}: tensor '{}': field '{}' must be a list of non-negative integers, got {}", path,
            name, field, json_type_name(value));
  std::vector<uint64_t> items;
  for (const auto& item : value) {
    FP4_CHECK(item.is_number_unsigned(), "{}: tensor '{}': field '{}' must hold non-negative integers, got {}", path,
              name, field, item.dump());
    items.push_back(item.get<uint64_t>());
  }
  return items;
}

TensorInfo parse_tensor_entry(const std::string& path, const std::string& name, const nlohmann::json& entry,
                              uint64_t data_start, uint64_t buffer_bytes) {
  FP4_CHECK(entry.is_object(), "{}: tensor '{}': entry must be an object with dtype, shape, data_offsets; got {}",
            path, name, json_type_name(entry));
  for (std::string_view field : {"dtype", "shape", "data_offsets"})
    FP4_CHECK(entry.contains(field), "{}: tensor '{}': field '{}' is missing", path, name, field);

  const auto& dtype_json = entry["dtype"];
  FP4_CHECK(dtype_json.is_string(), "{}: tensor '{}': field 'dtype' must be a string, got {}", path, name,
            json_type_name(dtype_json));
  auto dtype = parse_dtype(dtype_json.get_ref<const std::string&>());
  FP4_CHECK(dtype.has_value(), "{}: tensor '{}': unknown dtype '{}' (supported: {})", path, name,
            dtype_json.get_ref<const std::string&>(), known_dtypes());

  std::vector<int64_t> shape;
  for (uint64_t dim : unsigned_list(entry["shape"], path, name, "shape")) {
    FP4_CHECK(dim <= static_cast<uint64_t>(INT64_MAX), "{}: tensor '{}': shape dim {} is too large", path, name, dim);
    shape.push_back(static_cast<int64_t>(dim));
  }
  auto offsets = unsigned_list(entry["data_offsets"], path, name, "data_offsets");
  FP4_CHECK(offsets.size() == 2, "{}: tensor '{}': field 'data_offsets' must be [begin, end], got {} values", path,
            name, offsets.size());
  const uint64_t begin = offsets[0], end = offsets[1];
  FP4_CHECK(begin <= end, "{}: tensor '{}': data_offsets [{}, {}] end before they begin", path, name, begin, end);
  FP4_CHECK(end <= buffer_bytes,
            "{}: tensor '{}': data_offsets [{}, {}] lie outside the data buffer of {} bytes (file truncated?)", path,
            name, begin, end, buffer_bytes);

  const uint64_t numel = shape_numel(shape, fmt::format("{}: tensor '{}'", path, name));
  uint64_t expected_bytes = 0;
  FP4_CHECK(!__builtin_mul_overflow(numel, dtype_size(*dtype), &expected_bytes),
            "{}: tensor '{}': shape {} is too large", path, name, shape_to_string(shape));
  FP4_CHECK(end - begin == expected_bytes,
            "{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but shape {} of {} needs {} bytes", path, name,
            begin, end, end - begin, shape_to_string(shape), dtype_name(*dtype), expected_bytes);
  return TensorInfo{name, *dtype, std::move(shape), data_start + begin, end - begin};
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const nlohmann::json& value) {
  std::map<std::string, std::string> metadata;
  if (value.is_null()) return metadata;
  FP4_CHECK(value.is_object(), "{}: '__metadata__' must be an object of string to string, got {}", path,
            json_type_name(value));
  for (const auto& [key, item] : value.items()) {
    FP4_CHECK(item.is_string(), "{}: '__metadata__' entry '{}' must be a string, got {} {}", path, key,
              json_type_name(item), item.dump());
    metadata.emplace(key, item.get<std::string>());
  }
  return metadata;
}

// Tensors must tile [0, buffer_bytes) exactly: sorted by offset, each begins where the previous ends.
void check_buffer_tiling(const std::string& path, const std::vector<TensorInfo>& tensors, uint64_t data_start,
                         uint64_t buffer_bytes) {
  uint64_t covered_to = 0;  // buffer-relative end of the previous tensor
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : tensors) {
    const uint64_t begin = t.offset - data_start, end = begin + t.nbytes;
    FP4_CHECK(begin >= covered_to, "{}: tensors '{}' [{}, {}) and '{}' [{}, {}) overlap in the data buffer", path,
              previous ? previous->name : "", previous ? previous->offset - data_start : 0, covered_to, t.name,
              begin, end);
    FP4_CHECK(begin == covered_to, "{}: gap in the data buffer: bytes [{}, {}) before tensor '{}' belong to no tensor",
              path, covered_to, begin, t.name);
    covered_to = end;
    previous = &t;
  }
  FP4_CHECK(covered_to == buffer_bytes,
            "{}: {} trailing bytes after the last tensor: the data buffer is {} bytes but tensors cover {}", path,
            buffer_bytes - covered_to, buffer_bytes, covered_to);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------- reader

struct SafetensorsFile::Mapping {
  void* address = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (address != nullptr) ::munmap(address, size);
  }
};

SafetensorsFile::SafetensorsFile(std::unique_ptr<FileReader> reader, bool map) : reader_(std::move(reader)) {
  const std::string& file = reader_->path();
  const uint64_t file_size = reader_->size();
  FP4_CHECK(file_size >= kLengthPrefixBytes,
            "{}: file is {} bytes, too small for the 8-byte header length of a safetensors file", file, file_size);
  uint8_t prefix[kLengthPrefixBytes];
  reader_->read_exact(prefix, 0);
  const uint64_t header_bytes = read_le64(prefix);
  FP4_CHECK(header_bytes <= kSafetensorsMaxHeaderBytes,
            "{}: header length {} exceeds the {} byte limit (corrupt file or not safetensors)", file, header_bytes,
            kSafetensorsMaxHeaderBytes);
  FP4_CHECK(header_bytes <= file_size - kLengthPrefixBytes,
            "{}: header length {} runs past the end of the {} byte file (truncated or not safetensors)", file,
            header_bytes, file_size);
  std::string header_text(header_bytes, '\0');
  reader_->read_exact({reinterpret_cast<uint8_t*>(header_text.data()), header_text.size()}, kLengthPrefixBytes);

  const nlohmann::json header = parse_json_text(header_text, file + " (safetensors header)");
  FP4_CHECK(header.is_object(), "{}: the safetensors header must be a JSON object, got {}", file,
            json_type_name(header));
  const uint64_t data_start = kLengthPrefixBytes + header_bytes;
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      metadata_ = parse_metadata(file, entry);
    } else {
      tensors_.push_back(parse_tensor_entry(file, name, entry, data_start, file_size - data_start));
    }
  }
  // Zero-byte tensors sort before a same-offset neighbour, so they never read as overlaps.
  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::pair(a.offset, a.nbytes) < std::pair(b.offset, b.nbytes);
  });
  check_buffer_tiling(file, tensors_, data_start, file_size - data_start);
  for (size_t i = 0; i < tensors_.size(); ++i) index_by_name_.emplace(tensors_[i].name, i);

  if (map) {
    const auto* posix = dynamic_cast<const PosixFile*>(reader_.get());
    FP4_CHECK(posix != nullptr, "{}: only a POSIX file can be memory-mapped", file);
    void* address = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, posix->fd(), 0);
    FP4_CHECK(address != MAP_FAILED, "{}: mmap of {} bytes failed: {}", file, file_size, std::strerror(errno));
    mapping_ = std::make_unique<Mapping>();
    mapping_->address = address;
    mapping_->size = file_size;
  }
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  return SafetensorsFile(std::make_unique<PosixFile>(path), /*map=*/true);
}

SafetensorsFile SafetensorsFile::open_unmapped(std::unique_ptr<FileReader> reader) {
  FP4_CHECK(reader != nullptr, "SafetensorsFile::open_unmapped: null reader");
  return SafetensorsFile(std::move(reader), /*map=*/false);
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_by_name_.find(name);
  return it == index_by_name_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::tensor(std::string_view name) const {
  const TensorInfo* info = find(name);
  FP4_CHECK(info != nullptr, "{}: no tensor named '{}'", path(), name);
  return *info;
}

std::span<const uint8_t> SafetensorsFile::bytes(std::string_view name) const { return bytes(tensor(name)); }

std::span<const uint8_t> SafetensorsFile::bytes(const TensorInfo& tensor) const {
  FP4_CHECK(mapping_ != nullptr, "{}: tensor '{}': file was opened unmapped; use read()", path(), tensor.name);
  return {static_cast<const uint8_t*>(mapping_->address) + tensor.offset, tensor.nbytes};
}

void SafetensorsFile::read(const TensorInfo& tensor, uint64_t offset_in_tensor, std::span<uint8_t> dst) const {
  FP4_CHECK(offset_in_tensor <= tensor.nbytes && dst.size() <= tensor.nbytes - offset_in_tensor,
            "{}: tensor '{}': read of {} bytes at offset {} runs past its {} bytes", path(), tensor.name, dst.size(),
            offset_in_tensor, tensor.nbytes);
  reader_->read_exact(dst, tensor.offset + offset_in_tensor);
}

// ---------------------------------------------------------------------------------------------------------- writer

uint64_t TensorDecl::nbytes() const {
  uint64_t bytes = 0;
  FP4_CHECK(!__builtin_mul_overflow(shape_numel(shape, fmt::format("tensor '{}'", name)), dtype_size(dtype), &bytes),
            "tensor '{}': shape {} is too large", name, shape_to_string(shape));
  return bytes;
}

SafetensorsWriter::SafetensorsWriter(std::filesystem::path path, std::vector<TensorDecl> tensors,
                                     std::map<std::string, std::string> metadata)
    : path_(std::move(path)), tensors_(std::move(tensors)) {
  tmp_path_ = path_;
  tmp_path_ += ".tmp";
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  uint64_t offset = 0;
  for (const TensorDecl& t : tensors_) {
    FP4_CHECK(t.name != kMetadataKey, "{}: '__metadata__' is reserved and cannot name a tensor", path_.string());
    FP4_CHECK(!header.contains(t.name), "{}: tensor '{}' declared twice", path_.string(), t.name);
    const uint64_t nbytes = t.nbytes();
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string header_text = header.dump();
  // Pad with spaces so the data buffer starts 8-byte aligned (as the reference writer does).
  header_text.append((kLengthPrefixBytes - header_text.size() % kLengthPrefixBytes) % kLengthPrefixBytes, ' ');

  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  FP4_CHECK(fd_ >= 0, "{}: cannot create: {}", tmp_path_.string(), std::strerror(errno));
  uint8_t prefix[kLengthPrefixBytes];
  for (uint64_t i = 0, n = header_text.size(); i < kLengthPrefixBytes; ++i)
    prefix[i] = static_cast<uint8_t>(n >> (8 * i));
  try {
    write_all(prefix);
    write_all({reinterpret_cast<const uint8_t*>(header_text.data()), header_text.size()});
  } catch (...) {
    abandon();
    throw;
  }
}

SafetensorsWriter::~SafetensorsWriter() { abandon(); }

void SafetensorsWriter::abandon() noexcept {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_path_.c_str());
}

void SafetensorsWriter::write_all(std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    ssize_t written = ::write(fd_, bytes.data(), bytes.size());
    if (written < 0 && errno == EINTR) continue;
    FP4_CHECK(written > 0, "{}: write failed: {}", tmp_path_.string(), std::strerror(errno));
    bytes = bytes.subspan(static_cast<size_t>(written));
  }
}

void SafetensorsWriter::write(std::string_view name, std::span<const uint8_t> bytes) {
  FP4_CHECK(fd_ >= 0, "{}: writer is closed (finished or failed)", path_.string());
  FP4_CHECK(next_tensor_ < tensors_.size(), "{}: tensor '{}' written but all {} declared tensors are done",
            path_.string(), name, tensors_.size());
  const TensorDecl& expected = tensors_[next_tensor_];
  FP4_CHECK(name == expected.name, "{}: tensor '{}' written out of order: expected '{}' next", path_.string(), name,
            expected.name);
  FP4_CHECK(bytes.size() == expected.nbytes(), "{}: tensor '{}': got {} bytes, shape {} of {} needs {}",
            path_.string(), name, bytes.size(), shape_to_string(expected.shape), dtype_name(expected.dtype),
            expected.nbytes());
  try {
    write_all(bytes);
  } catch (...) {
    abandon();
    throw;
  }
  ++next_tensor_;
}

void SafetensorsWriter::finish() {
  FP4_CHECK(fd_ >= 0, "{}: writer is closed (finished or failed)", path_.string());
  FP4_CHECK(next_tensor_ == tensors_.size(), "{}: finish() with {} of {} tensors written; next missing: '{}'",
            path_.string(), next_tensor_, tensors_.size(), tensors_[next_tensor_].name);
  const bool synced = ::fsync(fd_) == 0;
  const int sync_errno = errno;
  const bool closed = ::close(fd_) == 0;
  fd_ = -1;
  if (!synced || !closed) {
    ::unlink(tmp_path_.c_str());
    fail("{}: flushing to disk failed: {}", tmp_path_.string(), std::strerror(synced ? errno : sync_errno));
  }
  std::error_code ec;
  std::filesystem::rename(tmp_path_, path_, ec);
  FP4_CHECK(!ec, "{}: cannot rename {} into place: {}", path_.string(), tmp_path_.string(), ec.message());
}

}  // namespace fp4serve
