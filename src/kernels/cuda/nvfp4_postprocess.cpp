// Host side of the GPU post-processing: validation (messages name the tensor and the rule) and the staging of
// in-place work through the scratch, as many whole matrices per pass as it holds.
#ifdef FP4SERVE_HAVE_CUDA
#include "kernels/cuda/nvfp4_postprocess.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <utility>

#include "common/error.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/nvfp4_postprocess_kernels.h"

namespace fp4serve::cuda {
namespace {

constexpr int64_t kMaxRows = int64_t{1} << 30;

void check_matrix_shape(const char* function, const ByteMatrixShape& shape) {
  FP4_CHECK(shape.n_matrices >= 0 && shape.n_rows >= 0 && shape.n_rows <= kMaxRows && shape.row_bytes >= 0,
            "{}: tensor '{}' has a bad shape [{}, {}, {}]", function, shape.name, shape.n_matrices, shape.n_rows,
            shape.row_bytes);
}

void check_row_order(const char* function, const ByteMatrixShape& shape, Nvfp4RowOrder order) {
  if (order == Nvfp4RowOrder::Linear) return;
  FP4_CHECK(shape.n_rows % 32 == 0,
            "{}: tensor '{}' has {} rows; the TRT-LLM row shuffle permutes 32-row blocks (N % 32 == 0); use the "
            "cutlass layout for this shape",
            function, shape.name, shape.n_rows);
}

// Runs stage_then(first, count, staged) over groups of whole matrices copied into the scratch.
template <typename StageThen>
void for_each_staged_group(const char* function, uint8_t* data, const ByteMatrixShape& shape, DeviceScratch scratch,
                           void* stream, StageThen stage_then) {
  const auto matrix_bytes = static_cast<size_t>(shape.n_rows * shape.row_bytes);
  FP4_CHECK(scratch.data != nullptr && scratch.bytes >= matrix_bytes,
            "{}: tensor '{}': the scratch holds {} bytes but in-place work needs at least one matrix, {} bytes "
            "(nvfp4_postprocess_scratch_bytes)",
            function, shape.name, scratch.bytes, matrix_bytes);
  const auto per_pass = static_cast<int64_t>(scratch.bytes / matrix_bytes);
  auto* staged = static_cast<uint8_t*>(scratch.data);
  for (int64_t first = 0; first < shape.n_matrices; first += per_pass) {
    const int64_t count = std::min(per_pass, shape.n_matrices - first);
    FP4_CUDA_CHECK(cudaMemcpyAsync(staged, data + first * static_cast<int64_t>(matrix_bytes),
                                   static_cast<size_t>(count) * matrix_bytes, cudaMemcpyDeviceToDevice,
                                   static_cast<cudaStream_t>(stream)));
    stage_then(first, count, staged);
  }
}

}  // namespace

size_t nvfp4_postprocess_scratch_bytes(const ByteMatrixShape& shape) {
  check_matrix_shape("nvfp4_postprocess_scratch_bytes", shape);
  return static_cast<size_t>(shape.n_rows * shape.row_bytes);
}

void arrange_rows_cuda(uint8_t* data, const ByteMatrixShape& shape, Nvfp4RowOrder order, DeviceScratch scratch,
                       void* stream) {
  check_matrix_shape("arrange_rows_cuda", shape);
  check_row_order("arrange_rows_cuda", shape, order);
  if (order == Nvfp4RowOrder::Linear || shape.n_matrices * shape.n_rows * shape.row_bytes == 0) return;
  FP4_CHECK(data != nullptr, "arrange_rows_cuda: tensor '{}' has no device data", shape.name);
  const int64_t matrix_bytes = shape.n_rows * shape.row_bytes;
  for_each_staged_group("arrange_rows_cuda", data, shape, scratch, stream,
                        [&](int64_t first, int64_t count, const uint8_t* staged) {
                          launch_scatter_rows(staged, data + first * matrix_bytes, count,
                                              static_cast<int32_t>(shape.n_rows), shape.row_bytes, order, stream);
                        });
}

void derive_block_scales_cuda(const uint8_t* raw, const ByteMatrixShape& shape, Nvfp4RowOrder order, uint8_t* derived,
                              DeviceScratch scratch, void* stream) {
  const char* function = "derive_block_scales_cuda";
  check_matrix_shape(function, shape);
  check_row_order(function, shape, order);
  FP4_CHECK(shape.row_bytes <= kMaxRows, "{}: tensor '{}' has {} scale columns", function, shape.name,
            shape.row_bytes);
  if (shape.n_matrices * shape.n_rows * shape.row_bytes == 0) return;
  FP4_CHECK(raw != nullptr && derived != nullptr, "{}: tensor '{}' needs device pointers for raw and derived",
            function, shape.name);
  const SwizzledScaleShape padded = swizzled_scale_shape(shape.n_rows, shape.row_bytes);
  const int64_t linear_bytes = shape.n_rows * shape.row_bytes, derived_bytes = padded.padded_rows * padded.padded_cols;
  const auto n_rows = static_cast<int32_t>(shape.n_rows);
  const auto scale_cols = static_cast<int32_t>(shape.row_bytes);
  if (raw == derived) {
    FP4_CHECK(swizzle_preserves_shape(shape.n_rows, shape.row_bytes),
              "{}: tensor '{}': scales [{}, {}] swizzle to the padded [{}, {}], so they cannot be derived in place; "
              "give a separate derived buffer",
              function, shape.name, shape.n_rows, shape.row_bytes, padded.padded_rows, padded.padded_cols);
    for_each_staged_group(function, derived, shape, scratch, stream,
                          [&](int64_t first, int64_t count, const uint8_t* staged) {
                            launch_scatter_scales(staged, derived + first * linear_bytes, count, n_rows, scale_cols,
                                                  order, stream);
                          });
    return;
  }
  const auto raw_begin = reinterpret_cast<uintptr_t>(raw), derived_begin = reinterpret_cast<uintptr_t>(derived);
  FP4_CHECK(raw_begin + static_cast<uintptr_t>(shape.n_matrices * linear_bytes) <= derived_begin ||
                derived_begin + static_cast<uintptr_t>(shape.n_matrices * derived_bytes) <= raw_begin,
            "{}: tensor '{}': raw and derived overlap without being the same buffer", function, shape.name);
  if (derived_bytes != linear_bytes)
    FP4_CUDA_CHECK(cudaMemsetAsync(derived, 0, static_cast<size_t>(shape.n_matrices * derived_bytes),
                                   static_cast<cudaStream_t>(stream)));
  launch_scatter_scales(raw, derived, shape.n_matrices, n_rows, scale_cols, order, stream);
}

void derive_linear_alphas_cuda(const float* weight_scale_2, const float* input_scale, int64_t n_shards,
                               bool static_activations, float* alpha, float* input_scale_inv, void* stream) {
  FP4_CHECK(n_shards >= 1 && n_shards <= 1024, "derive_linear_alphas_cuda: n_shards = {} is out of range", n_shards);
  FP4_CHECK(weight_scale_2 != nullptr && input_scale != nullptr && alpha != nullptr && input_scale_inv != nullptr,
            "derive_linear_alphas_cuda: weight_scale_2, input_scale, alpha and input_scale_inv must be device pointers");
  launch_linear_alphas(weight_scale_2, input_scale, static_cast<int32_t>(n_shards), static_activations, alpha,
                       input_scale_inv, stream);
}

void derive_moe_alphas_cuda(const MoeAlphaArgs& args) {
  FP4_CHECK(args.n_experts >= 1 && args.n_experts <= (int64_t{1} << 20),
            "derive_moe_alphas_cuda: n_experts = {} is out of range", args.n_experts);
  const std::pair<const void*, const char*> required[] = {
      {args.w13_weight_scale_2, "w13_weight_scale_2"},
      {args.w13_input_scale, "w13_input_scale"},
      {args.w2_weight_scale_2, "w2_weight_scale_2"},
      {args.w2_input_scale, "w2_input_scale"},
      {args.w13_input_scale_reduced, "w13_input_scale_reduced"},
      {args.w2_input_scale_reduced, "w2_input_scale_reduced"},
      {args.w13_input_scale_quant, "w13_input_scale_quant"},
      {args.w2_input_scale_quant, "w2_input_scale_quant"},
      {args.g1_alphas, "g1_alphas"},
      {args.g2_alphas, "g2_alphas"}};
  for (const auto& [pointer, name] : required)
    FP4_CHECK(pointer != nullptr, "derive_moe_alphas_cuda: {} must be a device pointer", name);
  launch_moe_alphas(args);
}

}  // namespace fp4serve::cuda
#endif  // FP4SERVE_HAVE_CUDA
