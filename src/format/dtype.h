// Element types of tensors (safetensors names in comments). Sizes in bytes; E2M1 is stored packed in U8.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace fp4serve {

enum class DType : uint8_t {
  BF16,     // "BF16"
  F16,      // "F16"
  F32,      // "F32"
  F64,      // "F64"
  U8,       // "U8"  (also packed E2M1 pairs, low nibble first)
  I8,       // "I8"
  F8_E4M3,  // "F8_E4M3" (float8_e4m3fn)
  I32,      // "I32"
  I64,      // "I64"
};

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);  // the safetensors spelling
std::optional<DType> parse_dtype(std::string_view safetensors_name);

}  // namespace fp4serve
