#include "io/memory_file.h"

#include <algorithm>
#include <cstring>

namespace fp4serve {

size_t MemoryFile::pread_some(std::span<uint8_t> dst, uint64_t offset) const {
  if (offset >= bytes_.size()) return 0;
  const size_t count = std::min<uint64_t>(dst.size(), bytes_.size() - offset);
  if (count > 0) std::memcpy(dst.data(), bytes_.data() + offset, count);
  return count;
}

}  // namespace fp4serve
