// Helpers for io tests: a temporary directory removed at scope exit, hand-built safetensors bytes, and an
// assertion that a call throws fp4serve::Error whose message contains every given fragment.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>

#include "common/error.h"

namespace fp4serve::io_test {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "fp4serve_io_XXXXXX").string();
    const char* made = ::mkdtemp(pattern.data());
    if (made == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline std::string le64(uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return bytes;
}

// A safetensors file spelled out by hand: the length prefix, the header text and the data buffer.
inline std::string safetensors_bytes(std::string_view header, std::string_view buffer) {
  return le64(header.size()) + std::string(header) + std::string(buffer);
}

inline void expect_error(const std::function<void()>& call, std::initializer_list<std::string_view> fragments) {
  try {
    call();
    ADD_FAILURE() << "expected fp4serve::Error";
  } catch (const fp4serve::Error& e) {
    const std::string message = e.what();
    for (std::string_view fragment : fragments)
      EXPECT_NE(message.find(fragment), std::string::npos) << "message lacks '" << fragment << "': " << message;
  }
}

}  // namespace fp4serve::io_test
