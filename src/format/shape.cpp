#include "format/shape.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"

namespace fp4serve {

int64_t shape_numel(std::span<const int64_t> shape, std::string_view what) {
  int64_t numel = 1;
  for (int64_t dim : shape) {
    FP4_CHECK(dim >= 0, "{}: negative dimension {} in shape {}", what, dim, shape_to_string(shape));
    FP4_CHECK(!__builtin_mul_overflow(numel, dim, &numel), "{}: shape {} overflows", what, shape_to_string(shape));
  }
  return numel;
}

std::string shape_to_string(std::span<const int64_t> shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace fp4serve
