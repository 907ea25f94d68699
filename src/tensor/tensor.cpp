#include "tensor/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"
#include "tensor/memory_arena.h"

namespace fp4serve {

namespace {
Tensor unallocated(const Shape& shape, DType dtype) {
  for (int64_t d : shape) FP4_CHECK(d >= 0, "negative dimension in shape {}", shape_to_string(shape));
  Tensor t;
  t.shape = shape;
  t.dtype = dtype;
  return t;
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t = unallocated(shape, dtype);
  t.storage = Storage::allocate(device, t.nbytes());
  return t;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, MemoryArena& arena) {
  Tensor t = unallocated(shape, dtype);
  t.storage = arena.allocate(t.nbytes());
  return t;
}

Tensor Tensor::rows(int64_t first, int64_t count) const {
  FP4_CHECK(!shape.empty() && first >= 0 && count >= 0 && first + count <= shape[0],
            "rows [{}, {}) out of range for {}", first, first + count, describe());
  Tensor view = *this;
  view.shape[0] = count;
  view.offset = offset + static_cast<size_t>(first) * (nbytes() / static_cast<size_t>(shape[0] == 0 ? 1 : shape[0]));
  return view;
}

std::string Tensor::describe() const {
  return fmt::format("{} {} on {}", dtype_name(dtype), shape_to_string(shape),
                     storage ? device_name(device()) : "nowhere");
}

void copy_into(const Tensor& dst, const Tensor& src) {
  FP4_CHECK(dst.nbytes() == src.nbytes(), "copy of {} into {}: sizes differ", src.describe(), dst.describe());
  if (dst.storage == src.storage && dst.offset == src.offset) return;  // the same bytes (an in-place derivation)
  copy_bytes(dst.device(), dst.raw(), src.device(), src.raw(), src.nbytes());
}

Tensor to_host(const Tensor& t) {
  Tensor host = Tensor::empty(t.shape, t.dtype, Device::CPU);
  copy_into(host, t);
  return host;
}

}  // namespace fp4serve
