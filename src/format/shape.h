// Tensor shapes: dimension lists, row-major. One element count and one spelling for the whole code base.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace fp4serve {

// Product of dims (1 for a scalar shape []); throws on a negative dim or an overflow of int64, naming `what`.
int64_t shape_numel(std::span<const int64_t> shape, std::string_view what = "shape");
std::string shape_to_string(std::span<const int64_t> shape);  // "[3, 4]"

}  // namespace fp4serve
