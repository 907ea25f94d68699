// XXH64 (Yann Collet's xxHash, 64-bit variant), written from its published specification, so that a trainer can
// compute the same digests with any xxhash library (Python: xxhash.xxh64). Streaming and one-shot forms agree.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>

namespace fp4serve {

class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(std::span<const uint8_t> bytes);
  void update(std::string_view text) { update({reinterpret_cast<const uint8_t*>(text.data()), text.size()}); }
  uint64_t digest() const;

 private:
  uint64_t seed_;
  uint64_t acc_[4];
  uint8_t buffer_[32];
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

uint64_t xxh64(std::span<const uint8_t> bytes, uint64_t seed = 0);

}  // namespace fp4serve
