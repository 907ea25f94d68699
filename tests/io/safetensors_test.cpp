// safetensors reader validation (one hand-written bad file per rule of spec §5), writer contract, round trips
// mapped and unmapped, and reads through a fault-injecting FileReader.
#include "io/safetensors.h"
#include "io/memory_file.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "tests/io/io_test_util.h"

namespace fp4serve {
namespace {

using io_test::expect_error;
using io_test::safetensors_bytes;
using io_test::TempDir;

// Writes `bytes` to a file in `dir` and opens it mapped.
SafetensorsFile open_bytes(const TempDir& dir, std::string_view bytes) {
  const auto path = dir / "t.safetensors";
  io_test::write_file(path, bytes);
  return SafetensorsFile::open(path);
}

void expect_bad_file(std::string_view bytes, std::initializer_list<std::string_view> fragments) {
  TempDir dir;
  const auto path = dir / "bad.safetensors";
  io_test::write_file(path, bytes);
  expect_error([&] { SafetensorsFile::open(path); }, fragments);
  expect_error([&] { SafetensorsFile::open(path); }, {path.string()});  // every message names the file
  // The unmapped path validates the same header the same way.
  expect_error([&] { SafetensorsFile::open_unmapped(open_posix_file(path)); }, fragments);
}

const std::string kEntryA = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

TEST(SafetensorsReader, ReadsHandWrittenFile) {
  TempDir dir;
  // Header padded with spaces (as the reference writer pads to 8 bytes); tensors listed out of offset order.
  const std::string header = R"({"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]},)" + kEntryA +
                             R"(,"__metadata__":{"format":"pt"}}   )";
  const std::string buffer = "\x01\x02\x03\x04\x05\x06\x07\x08\xAA\xBB\xCC\xDD";
  auto file = open_bytes(dir, safetensors_bytes(header, buffer));
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.tensors()[0].name, "a");  // file order
  EXPECT_EQ(file.tensors()[1].name, "b");
  const TensorInfo& b = file.tensor("b");
  EXPECT_EQ(b.dtype, DType::BF16);
  EXPECT_EQ(b.shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(b.offset, 8 + header.size() + 8);
  EXPECT_EQ(b.nbytes, 4u);
  auto bytes = file.bytes("b");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()), "\xAA\xBB\xCC\xDD");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.find("missing"), nullptr);
  expect_error([&] { file.tensor("missing"); }, {"t.safetensors", "missing"});
}

// The fuzz targets parse bytes through MemoryFile: it must read like a file on disk and never report a change.
TEST(SafetensorsReader, MemoryFileReadsLikeTheFileOnDisk) {
  const std::string bytes = safetensors_bytes("{" + kEntryA + "}", "\x01\x02\x03\x04\x05\x06\x07\x08");
  const std::span<const uint8_t> view(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  auto memory = std::make_unique<MemoryFile>("memory.safetensors", view);
  std::vector<uint8_t> tail(16);
  EXPECT_EQ(memory->pread_some(tail, bytes.size() - 3), 3u);  // short at the end, like pread
  EXPECT_EQ(memory->pread_some(tail, bytes.size()), 0u);
  EXPECT_EQ(memory->change_since_open(), std::nullopt);
  const SafetensorsFile file = SafetensorsFile::open_unmapped(std::move(memory));
  ASSERT_EQ(file.tensors().size(), 1u);
  std::vector<uint8_t> a(8);
  file.read(file.tensor("a"), 0, a);
  EXPECT_EQ(a, (std::vector<uint8_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  const std::string truncated = bytes.substr(0, bytes.size() - 1);
  expect_error(
      [&] {
        SafetensorsFile::open_unmapped(std::make_unique<MemoryFile>(
            "cut.safetensors",
            std::span(reinterpret_cast<const uint8_t*>(truncated.data()), truncated.size())));
      },
      {"cut.safetensors"});
}

TEST(SafetensorsReader, AcceptsEdgeCases) {
  TempDir dir;
  {  // No tensors at all, empty buffer.
    auto file = open_bytes(dir, safetensors_bytes("{}", ""));
    EXPECT_TRUE(file.tensors().empty());
  }
  {  // Scalar shape [] holds one element; a zero-size tensor may sit at the same offset as the next one; null
     // metadata is allowed.
    const std::string header =
        R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},)"
        R"("z":{"dtype":"I64","shape":[0,5],"data_offsets":[4,4]},)"
        R"("u":{"dtype":"U8","shape":[3],"data_offsets":[4,7]},"__metadata__":null})";
    auto file = open_bytes(dir, safetensors_bytes(header, "abcdefg"));
    EXPECT_EQ(file.tensor("s").nbytes, 4u);
    EXPECT_EQ(file.tensor("z").nbytes, 0u);
    EXPECT_EQ(file.bytes("z").size(), 0u);
    EXPECT_EQ(file.bytes("u")[0], 'e');
    EXPECT_TRUE(file.metadata().empty());
  }
}

TEST(SafetensorsReader, RejectsFileTooSmallForLength) { expect_bad_file("\x05\x00\x00", {"too small", "8-byte"}); }

TEST(SafetensorsReader, RejectsHeaderLengthPastEndOfFile) {
  expect_bad_file(io_test::le64(1000) + "{}", {"header length 1000", "past the end"});
}

TEST(SafetensorsReader, RejectsHugeHeaderLength) {
  expect_bad_file(io_test::le64(kSafetensorsMaxHeaderBytes + 1) + "{}", {"100000001", "exceeds", "limit"});
  expect_bad_file(io_test::le64(~uint64_t{0}) + "{}", {"exceeds"});
}

TEST(SafetensorsReader, RejectsMalformedJson) {
  expect_bad_file(safetensors_bytes(R"({"a":{"dtype":"F32",)", ""), {"malformed JSON"});
  expect_bad_file(safetensors_bytes("", ""), {"malformed JSON"});
  expect_bad_file(safetensors_bytes("{\"a\xff\":1}", ""), {"malformed JSON"});  // invalid UTF-8
  expect_bad_file(safetensors_bytes("[1,2]", ""), {"must be a JSON object"});
}

TEST(SafetensorsReader, RejectsDuplicateTensorName) {
  const std::string header = "{" + kEntryA + "," + kEntryA + "}";
  expect_bad_file(safetensors_bytes(header, "12345678"), {"duplicate key 'a'"});
  // Duplicates inside an entry are just as ambiguous.
  expect_bad_file(safetensors_bytes(R"({"a":{"dtype":"F32","dtype":"U8","shape":[2],"data_offsets":[0,8]}})",
                                    "12345678"),
                  {"duplicate key 'dtype'"});
}

TEST(SafetensorsReader, RejectsByteCountThatDisagreesWithShape) {
  expect_bad_file(safetensors_bytes(R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,10]}})", "0123456789"),
                  {"tensor 'w'", "hold 10 bytes", "[2, 3]", "needs 12"});
}

TEST(SafetensorsReader, RejectsOffsetsOutsideBuffer) {
  expect_bad_file(safetensors_bytes(R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}})", "01234567"),
                  {"tensor 'w'", "outside the data buffer of 8 bytes"});
  expect_bad_file(safetensors_bytes(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[6,4]}})", "0123456"),
                  {"tensor 'w'", "end before they begin"});
}

TEST(SafetensorsReader, RejectsOverlappingTensors) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  expect_bad_file(safetensors_bytes(header, "0123456789ab"), {"'a'", "'b'", "overlap"});
}

TEST(SafetensorsReader, RejectsGapBetweenTensors) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  expect_bad_file(safetensors_bytes(header, "0123456789ab"), {"gap", "[4, 8)", "'b'"});
  // A buffer that does not start at offset 0 is a gap too.
  expect_bad_file(safetensors_bytes(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "01234567"),
                  {"gap", "[0, 4)"});
}

TEST(SafetensorsReader, RejectsTrailingBytes) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  expect_bad_file(safetensors_bytes(header, "012345"), {"2 trailing bytes"});
  expect_bad_file(safetensors_bytes("{}", "x"), {"1 trailing bytes"});
}

TEST(SafetensorsReader, RejectsUnknownDtype) {
  expect_bad_file(safetensors_bytes(R"({"w":{"dtype":"F8_E5M2","shape":[1],"data_offsets":[0,1]}})", "x"),
                  {"tensor 'w'", "unknown dtype 'F8_E5M2'", "F8_E4M3"});
  expect_bad_file(safetensors_bytes(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,1]}})", "x"),
                  {"tensor 'w'", "'dtype' must be a string"});
}

TEST(SafetensorsReader, RejectsMetadataThatIsNotStringToString) {
  expect_bad_file(safetensors_bytes(R"({"__metadata__":{"format":1}})", ""), {"__metadata__", "'format'", "string"});
  expect_bad_file(safetensors_bytes(R"({"__metadata__":["pt"]})", ""), {"__metadata__", "object"});
}

TEST(SafetensorsReader, RejectsMalformedEntries) {
  expect_bad_file(safetensors_bytes(R"({"w":{"dtype":"U8","shape":[1]}})", "x"), {"tensor 'w'", "'data_offsets'",
                                                                                  "missing"});
  expect_bad_file(safetensors_bytes(R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", "x"),
                  {"tensor 'w'", "'shape'", "non-negative"});
  expect_bad_file(safetensors_bytes(R"({"w":{"dtype":"U8","shape":"1","data_offsets":[0,1]}})", "x"),
                  {"tensor 'w'", "'shape'", "list"});
  expect_bad_file(safetensors_bytes(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", "x"),
                  {"tensor 'w'", "[begin, end]"});
  expect_bad_file(safetensors_bytes(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1.0]}})", "x"),
                  {"tensor 'w'", "'data_offsets'"});
  expect_bad_file(safetensors_bytes(R"({"w":[1]})", "x"), {"tensor 'w'", "must be an object"});
  // prod(shape) * size overflowing 64 bits must not wrap around to a small, "valid" byte count.
  expect_bad_file(safetensors_bytes(
                      R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""),
                  {"tensor 'w'", "overflows"});
  expect_bad_file(
      safetensors_bytes(R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})", ""),
      {"tensor 'w'", "too large"});
}

// ------------------------------------------------------------------------------------------------ writer + round trip

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> bytes(n);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  return bytes;
}

struct Written {
  std::vector<TensorDecl> decls;
  std::vector<std::vector<uint8_t>> data;
};

Written write_sample(const std::filesystem::path& path) {
  Written w;
  w.decls = {{"model.embed_tokens.weight", DType::BF16, {7, 5}},
             {"scalar", DType::F32, {}},
             {"empty", DType::I64, {0, 3}},
             {"packed", DType::U8, {3, 9}},
             {"scales", DType::F8_E4M3, {3, 1}},
             {"ids", DType::I32, {4}}};
  for (size_t i = 0; i < w.decls.size(); ++i) w.data.push_back(random_bytes(w.decls[i].nbytes(), 100 + i));
  SafetensorsWriter writer(path, w.decls, {{"format", "pt"}, {"producer", "test"}});
  for (size_t i = 0; i < w.decls.size(); ++i) writer.write(w.decls[i].name, w.data[i]);
  writer.finish();
  return w;
}

TEST(SafetensorsWriter, RoundTripsMappedAndUnmapped) {
  TempDir dir;
  const auto path = dir / "rt.safetensors";
  const Written w = write_sample(path);
  EXPECT_FALSE(std::filesystem::exists(dir / "rt.safetensors.tmp"));

  // Independent look at the layout: data starts 8-aligned and in declaration order.
  const std::string raw = io_test::read_file(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u);
  size_t total = 0;
  for (const auto& d : w.data) total += d.size();
  EXPECT_EQ(raw.size(), 8 + header_len + total);
  EXPECT_EQ(raw.substr(8 + header_len, w.data[0].size()),
            std::string(w.data[0].begin(), w.data[0].end()));

  auto mapped = SafetensorsFile::open(path);
  auto unmapped = SafetensorsFile::open_unmapped(open_posix_file(path));
  EXPECT_TRUE(mapped.is_mapped());
  EXPECT_FALSE(unmapped.is_mapped());
  EXPECT_EQ(mapped.metadata().at("producer"), "test");
  for (size_t i = 0; i < w.decls.size(); ++i) {
    SCOPED_TRACE(w.decls[i].name);
    const TensorInfo& info = mapped.tensor(w.decls[i].name);
    EXPECT_EQ(info.dtype, w.decls[i].dtype);
    EXPECT_EQ(info.shape, w.decls[i].shape);
    auto view = mapped.bytes(info);
    EXPECT_EQ(std::vector<uint8_t>(view.begin(), view.end()), w.data[i]);
    std::vector<uint8_t> copy(w.data[i].size());
    unmapped.read(unmapped.tensor(w.decls[i].name), 0, copy);
    EXPECT_EQ(copy, w.data[i]);
  }
  // Partial reads at an offset inside a tensor, and reads past its end are refused.
  const TensorInfo& packed = unmapped.tensor("packed");
  std::vector<uint8_t> part(5);
  unmapped.read(packed, 20, part);
  EXPECT_EQ(part, std::vector<uint8_t>(w.data[3].begin() + 20, w.data[3].begin() + 25));
  std::vector<uint8_t> too_long(8);
  expect_error([&] { unmapped.read(packed, 20, too_long); }, {"rt.safetensors", "'packed'", "runs past"});
  expect_error([&] { unmapped.bytes("packed"); }, {"rt.safetensors", "'packed'", "unmapped"});
}

TEST(SafetensorsWriter, EnforcesOrderSizesAndCompleteness) {
  TempDir dir;
  const auto path = dir / "w.safetensors";
  const std::vector<TensorDecl> decls = {{"first", DType::F32, {2}}, {"second", DType::U8, {3}}};
  const std::vector<uint8_t> eight(8), three(3);
  {
    SafetensorsWriter writer(path, decls);
    expect_error([&] { writer.write("second", three); }, {"w.safetensors", "'second'", "out of order", "'first'"});
    expect_error([&] { writer.write("first", three); }, {"w.safetensors", "'first'", "got 3 bytes", "needs 8"});
    writer.write("first", eight);
    expect_error([&] { writer.finish(); }, {"w.safetensors", "1 of 2", "'second'"});
    // Until finish() succeeds, only the temporary file exists.
    EXPECT_FALSE(std::filesystem::exists(path));
  }
  // Destroyed without finish(): the temporary file is gone as well.
  EXPECT_FALSE(std::filesystem::exists(dir / "w.safetensors.tmp"));

  expect_error([&] { SafetensorsWriter(path, {{"x", DType::U8, {1}}, {"x", DType::U8, {2}}}); },
               {"w.safetensors", "'x'", "twice"});
  expect_error([&] { SafetensorsWriter(path, {{"__metadata__", DType::U8, {1}}}); }, {"reserved"});
  expect_error([&] { SafetensorsWriter(path, {{"neg", DType::U8, {2, -1}}}); }, {"'neg'", "negative"});
  expect_error([&] { SafetensorsWriter(dir / "no_such_dir" / "x.safetensors", {}); }, {"no_such_dir", "cannot create"});
}

// ------------------------------------------------------------------------------------------------- fault injection

// Wraps a real file: serves at most `max_chunk` bytes per call, and from `fail_at` on either fails with EIO or
// reports end of file (a file truncated behind our back).
class FaultyReader final : public FileReader {
 public:
  enum class Fault { None, IoError, Truncated };
  FaultyReader(const std::filesystem::path& path, size_t max_chunk, Fault fault, uint64_t fail_at)
      : file_(path), max_chunk_(max_chunk), fault_(fault), fail_at_(fail_at) {}
  const std::string& path() const override { return file_.path(); }
  uint64_t size() const override { return file_.size(); }
  size_t pread_some(std::span<uint8_t> dst, uint64_t offset) const override {
    ++calls;
    if (fault_ != Fault::None && offset >= fail_at_) {
      FP4_CHECK(fault_ != Fault::IoError, "{}: read at offset {} failed: {}", path(), offset, std::strerror(EIO));
      return 0;
    }
    uint64_t limit = std::min<uint64_t>(dst.size(), max_chunk_);
    if (fault_ != Fault::None) limit = std::min<uint64_t>(limit, fail_at_ - offset);
    return file_.pread_some(dst.first(limit), offset);
  }
  std::optional<std::string> change_since_open() const override { return file_.change_since_open(); }
  mutable int calls = 0;

 private:
  PosixFile file_;
  size_t max_chunk_;
  Fault fault_;
  uint64_t fail_at_;
};

TEST(SafetensorsFaults, ShortReadsAreRetried) {
  TempDir dir;
  const auto path = dir / "f.safetensors";
  const Written w = write_sample(path);
  auto reader = std::make_unique<FaultyReader>(path, 3, FaultyReader::Fault::None, 0);
  const FaultyReader* faulty = reader.get();
  auto file = SafetensorsFile::open_unmapped(std::move(reader));
  std::vector<uint8_t> copy(w.data[0].size());
  const int calls_before = faulty->calls;
  file.read(file.tensor("model.embed_tokens.weight"), 0, copy);
  EXPECT_EQ(copy, w.data[0]);
  EXPECT_EQ(faulty->calls - calls_before, static_cast<int>((copy.size() + 2) / 3));
}

TEST(SafetensorsFaults, IoErrorAndTruncationNameTheFile) {
  TempDir dir;
  const auto path = dir / "f.safetensors";
  const Written w = write_sample(path);
  const uint64_t data_start = SafetensorsFile::open(path).tensors().front().offset;
  for (auto fault : {FaultyReader::Fault::IoError, FaultyReader::Fault::Truncated}) {
    SCOPED_TRACE(static_cast<int>(fault));
    // Failing inside the header: open itself fails.
    expect_error([&] { SafetensorsFile::open_unmapped(std::make_unique<FaultyReader>(path, 1 << 20, fault, 20)); },
                 {"f.safetensors"});
    // Failing inside the first tensor's bytes: open succeeds, the read fails and says where.
    auto file = SafetensorsFile::open_unmapped(std::make_unique<FaultyReader>(path, 1 << 20, fault, data_start + 10));
    std::vector<uint8_t> copy(w.data[0].size());
    expect_error([&] { file.read(file.tensor("model.embed_tokens.weight"), 0, copy); },
                 {"f.safetensors", std::to_string(data_start + 10),
                  fault == FaultyReader::Fault::IoError ? "failed" : "truncated"});
  }
}

TEST(SafetensorsFaults, MissingFileAndDirectoryAreClear) {
  TempDir dir;
  expect_error([&] { SafetensorsFile::open(dir / "absent.safetensors"); }, {"absent.safetensors", "cannot open"});
  expect_error([&] { SafetensorsFile::open(dir.path()); }, {dir.path().string(), "not a regular file"});
}

}  // namespace
}  // namespace fp4serve
