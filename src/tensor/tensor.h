// Tensor: a typed, shaped, contiguous row-major view into shared Storage (storage + byte offset + shape + dtype).
// Copying a Tensor copies the view, never the bytes.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "format/dtype.h"
#include "format/shape.h"
#include "tensor/storage.h"

namespace fp4serve {

using Shape = std::vector<int64_t>;

struct Tensor {
  std::shared_ptr<Storage> storage;
  size_t offset = 0;  // bytes into storage
  Shape shape;
  DType dtype = DType::U8;

  static Tensor empty(const Shape& shape, DType dtype, Device device);  // zero-filled, own storage
  static Tensor empty(const Shape& shape, DType dtype, MemoryArena& arena);  // zero-filled block of the arena

  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  Device device() const { return storage->device(); }
  bool defined() const { return storage != nullptr; }
  bool same_shape_and_dtype(const Tensor& other) const { return shape == other.shape && dtype == other.dtype; }

  uint8_t* raw() const { return storage->data() + offset; }
  // Host-only typed access; the caller picks T matching dtype (bf16 as uint16_t, e4m3/e2m1 as uint8_t).
  template <typename T>
  T* data() const { return reinterpret_cast<T*>(raw()); }
  template <typename T>
  std::span<T> span() const { return {data<T>(), static_cast<size_t>(numel())}; }

  // A view of `count` rows starting at `first` along dim 0 (shares storage).
  Tensor rows(int64_t first, int64_t count) const;
  std::string describe() const;  // "F32 [2, 3] on cpu"
};

// Copies src's bytes into dst's existing storage (same nbytes required), across devices as needed; a tensor onto
// itself (same storage and offset) copies nothing.
void copy_into(const Tensor& dst, const Tensor& src);
// A host copy of any tensor (for tests, checksums and inspection).
Tensor to_host(const Tensor& t);

}  // namespace fp4serve
