#include "quant/method_util.h"

#include <cstring>

#include "common/error.h"

namespace fp4serve {

const Tensor& derived_param(ParameterSet& params, const std::string& name, const Shape& shape, DType dtype,
                            Device device) {
  const std::shared_ptr<Parameter> existing = params.find(name);
  if (existing == nullptr || existing->tensor.shape != shape || existing->tensor.dtype != dtype)
    params.copy_or_rebind(name, Tensor::empty(shape, dtype, device));
  return params.get(name);
}

Tensor host_f32(const Shape& shape, std::span<const float> values) {
  Tensor out = Tensor::empty(shape, DType::F32, Device::CPU);
  FP4_CHECK(static_cast<size_t>(out.numel()) == values.size(), "host_f32: {} values for shape {}", values.size(),
            shape_to_string(shape));
  std::memcpy(out.raw(), values.data(), values.size_bytes());
  return out;
}

void fill_f32(const Tensor& param, float value) {
  std::vector<float> values(static_cast<size_t>(param.numel()), value);
  copy_into(param, host_f32(param.shape, values));
}

std::vector<float> read_f32(const Tensor& tensor) {
  FP4_CHECK(tensor.dtype == DType::F32, "read_f32: {} is not F32", tensor.describe());
  const Tensor host = to_host(tensor);
  return {host.data<float>(), host.data<float>() + host.numel()};
}

void check_operand(const Tensor& tensor, DType dtype, const Shape& shape, std::string_view layer,
                   std::string_view operand) {
  FP4_CHECK(tensor.defined() && tensor.dtype == dtype && tensor.shape == shape, "{}: operand {} is {}, expected {} {}",
            layer, operand, tensor.defined() ? tensor.describe() : "undefined", dtype_name(dtype),
            shape_to_string(shape));
  FP4_CHECK(tensor.device() == Device::CPU, "{}: operand {} is on {}; only the CPU kernels are wired into apply so far",
            layer, operand, device_name(tensor.device()));
}

}  // namespace fp4serve
