#include "format/dtype.h"

#include <array>
#include <utility>

namespace fp4serve {

namespace {
struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};
constexpr std::array<DTypeInfo, 9> kDTypes{{
    {DType::BF16, "BF16", 2},
    {DType::F16, "F16", 2},
    {DType::F32, "F32", 4},
    {DType::F64, "F64", 8},
    {DType::U8, "U8", 1},
    {DType::I8, "I8", 1},
    {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::I32, "I32", 4},
    {DType::I64, "I64", 8},
}};
const DTypeInfo& info(DType dtype) { return kDTypes[static_cast<size_t>(dtype)]; }
}  // namespace

size_t dtype_size(DType dtype) { return info(dtype).size; }
std::string_view dtype_name(DType dtype) { return info(dtype).name; }

std::optional<DType> parse_dtype(std::string_view safetensors_name) {
  for (const auto& d : kDTypes)
    if (d.name == safetensors_name) return d.dtype;
  return std::nullopt;
}

}  // namespace fp4serve
