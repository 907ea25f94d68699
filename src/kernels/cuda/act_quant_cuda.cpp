// Host side of the GPU activation quantization: argument validation (messages name the field), then the launch.
#ifdef FP4SERVE_HAVE_CUDA
#include "kernels/cuda/act_quant_cuda.h"

#include "common/error.h"
#include "format/nvfp4.h"
#include "kernels/cuda/act_quant_kernels.h"

namespace fp4serve::cuda {
namespace {

void check_args(const char* function, const ActQuantArgs& a) {
  FP4_CHECK(a.rows >= 0 && a.rows <= (int64_t{1} << 31) - 1, "{}: rows = {} is out of range", function, a.rows);
  FP4_CHECK(a.cols >= kNvfp4BlockSize && a.cols % kNvfp4BlockSize == 0 && a.cols <= (int64_t{1} << 30),
            "{}: cols = {} must be a positive multiple of {} (the NVFP4 block size)", function, a.cols,
            kNvfp4BlockSize);
  if (a.rows == 0) return;
  FP4_CHECK(a.x != nullptr && reinterpret_cast<uintptr_t>(a.x) % 16 == 0,
            "{}: x must be a non-null 16-byte aligned device pointer", function);
  FP4_CHECK(a.packed != nullptr && reinterpret_cast<uintptr_t>(a.packed) % 8 == 0,
            "{}: packed must be a non-null 8-byte aligned device pointer", function);
  FP4_CHECK(a.block_scales != nullptr, "{}: block_scales must be a non-null device pointer", function);
}

}  // namespace

void quantize_activations_static_cuda(const ActQuantArgs& args, const float* input_scale) {
  check_args("quantize_activations_static_cuda", args);
  FP4_CHECK(input_scale != nullptr, "quantize_activations_static_cuda: input_scale must be a device pointer to one f32");
  if (args.rows == 0) return;
  launch_act_quant(args, input_scale, nullptr);
}

void quantize_activations_per_token_cuda(const ActQuantArgs& args, float* row_scales) {
  check_args("quantize_activations_per_token_cuda", args);
  FP4_CHECK(row_scales != nullptr, "quantize_activations_per_token_cuda: row_scales must be a device pointer to rows f32");
  if (args.rows == 0) return;
  launch_act_quant(args, nullptr, row_scales);
}

}  // namespace fp4serve::cuda
#endif  // FP4SERVE_HAVE_CUDA
