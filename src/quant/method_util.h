// Helpers the quantization methods share: staging parameters between their device and the host (host
// post-processing and export work on host bytes, then write back into the same storage), the derived parameters
// that GPU post-processing writes in place, and checks of apply's tensors.
#pragma once
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tensor/parameter.h"
#include "tensor/tensor.h"

namespace fp4serve {

// A host f32 tensor of the given shape holding `values` (numel must match).
Tensor host_f32(const Shape& shape, std::span<const float> values);
// Every element of an f32 parameter (on any device) set to value.
void fill_f32(const Tensor& param, float value);
// The elements of an f32 tensor on any device.
std::vector<float> read_f32(const Tensor& tensor);

// A derived parameter that GPU post-processing writes in place: `name` when it already exists with this shape and
// dtype (every load after the first), else a new zero tensor on `device` registered under it.
const Tensor& derived_param(ParameterSet& params, const std::string& name, const Shape& shape, DType dtype,
                            Device device);

// apply's operands: `tensor` must be `dtype` with `shape` on the CPU (the CUDA kernels are not wired yet).
void check_operand(const Tensor& tensor, DType dtype, const Shape& shape, std::string_view layer,
                   std::string_view operand);

}  // namespace fp4serve
