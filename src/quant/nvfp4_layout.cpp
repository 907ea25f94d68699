#include "quant/nvfp4_layout.h"

#include <vector>

#include "common/error.h"
#include "format/layout.h"
#include "quant/method_util.h"

namespace fp4serve {

namespace {
ByteMatrixShape rows_of(const Nvfp4MatrixShape& shape, int64_t row_bytes) {
  return {.n_matrices = shape.n_matrices, .n_rows = shape.n_rows, .row_bytes = row_bytes, .name = shape.name};
}
}  // namespace

Nvfp4RowOrder nvfp4_row_order(WeightLayout layout, bool gated) {
  if (layout == WeightLayout::Cutlass) return Nvfp4RowOrder::Linear;
  return gated ? Nvfp4RowOrder::GatedShuffled : Nvfp4RowOrder::Shuffled;
}

Nvfp4Activation nvfp4_activation(ActQuant mode) {
  switch (mode) {
    case ActQuant::None:
      return Nvfp4Activation::Bf16;
    case ActQuant::Static:
      return Nvfp4Activation::Static;
    case ActQuant::PerToken:
      return Nvfp4Activation::PerToken;
  }
  return Nvfp4Activation::Bf16;
}

void check_nvfp4_layout(WeightLayout layout, const Nvfp4MatrixShape& shape) {
  FP4_CHECK(shape.k > 0 && shape.k % 16 == 0,
            "{}: in_features = {} is not a positive multiple of 16, which NVFP4 needs; exclude the module from "
            "quantization",
            shape.name, shape.k);
  FP4_CHECK(!shape.gated || shape.n_rows % 2 == 0, "{}: a gated w13 needs an even row count, got {}", shape.name,
            shape.n_rows);
  if (layout == WeightLayout::Trtllm)
    FP4_CHECK(shape.n_rows % 32 == 0,
              "{}: the TRT-LLM layout shuffles rows in blocks of 32, but the weight has {} rows (N % 32 != 0); use "
              "the cutlass layout (--moe-backend cutlass) for this model",
              shape.name, shape.n_rows);
}

Shape derived_scale_shape(const Nvfp4MatrixShape& shape) {
  const int64_t kb = shape.scale_cols();
  Shape out;
  if (shape.n_matrices != 1) out.push_back(shape.n_matrices);
  if (swizzle_preserves_shape(shape.n_rows, kb)) {
    out.insert(out.end(), {shape.n_rows, kb});
  } else {
    const SwizzledScaleShape padded = swizzled_scale_shape(shape.n_rows, kb);
    out.insert(out.end(), {padded.padded_rows, padded.padded_cols});
  }
  return out;
}

void arrange_weight_rows(uint8_t* packed, const Nvfp4MatrixShape& shape, WeightLayout layout) {
  if (layout == WeightLayout::Cutlass) return;
  const ByteMatrixShape rows = rows_of(shape, shape.k / 2);
  if (shape.gated) reorder_rows_gated_in_place(packed, rows);
  shuffle_rows_in_place(packed, rows);
}

void restore_weight_rows(uint8_t* packed, const Nvfp4MatrixShape& shape, WeightLayout layout) {
  if (layout == WeightLayout::Cutlass) return;
  const ByteMatrixShape rows = rows_of(shape, shape.k / 2);
  unshuffle_rows_in_place(packed, rows);
  if (shape.gated) unreorder_rows_gated_in_place(packed, rows);
}

void derive_block_scales(const uint8_t* raw, const Nvfp4MatrixShape& shape, WeightLayout layout, uint8_t* derived) {
  const ByteMatrixShape scales = rows_of(shape, shape.scale_cols());
  if (layout == WeightLayout::Cutlass) {
    swizzle_block_scales(raw, scales, derived);
    return;
  }
  std::vector<uint8_t> rows(raw, raw + shape.n_matrices * shape.n_rows * shape.scale_cols());
  if (shape.gated) reorder_rows_gated_in_place(rows.data(), scales);
  shuffle_rows_in_place(rows.data(), scales);
  swizzle_block_scales(rows.data(), scales, derived);
}

void underive_block_scales(const uint8_t* derived, const Nvfp4MatrixShape& shape, WeightLayout layout, uint8_t* raw) {
  const ByteMatrixShape scales = rows_of(shape, shape.scale_cols());
  unswizzle_block_scales(derived, scales, raw);
  if (layout == WeightLayout::Cutlass) return;
  unshuffle_rows_in_place(raw, scales);
  if (shape.gated) unreorder_rows_gated_in_place(raw, scales);
}

void derive_block_scale_param_on_gpu(ParameterSet& params, const std::string& source, const std::string& derived,
                                     const Nvfp4MatrixShape& shape, WeightLayout layout) {
  const Tensor& raw = params.get(source);
  const Shape derived_shape = derived_scale_shape(shape);
  if (derived_shape == raw.shape) {
    derive_block_scales_on_gpu(raw.raw(), shape, layout, raw.raw());
    params.alias_or_bind_derived(source, derived, raw);
    return;
  }
  const Tensor& own = derived_param(params, derived, derived_shape, DType::F8_E4M3, Device::CUDA);
  derive_block_scales_on_gpu(raw.raw(), shape, layout, own.raw());
}

#ifdef FP4SERVE_HAVE_CUDA
namespace {
// One matrix of scratch (or more: the kernels take several per pass when it is larger), freed after the call.
cuda::DeviceScratch scratch_for(const ByteMatrixShape& shape, Tensor& holder) {
  const size_t bytes = cuda::nvfp4_postprocess_scratch_bytes(shape);
  holder = Tensor::empty({static_cast<int64_t>(bytes)}, DType::U8, Device::CUDA);
  return {.data = holder.raw(), .bytes = bytes};
}
}  // namespace

void arrange_weight_rows_on_gpu(uint8_t* packed, const Nvfp4MatrixShape& shape, WeightLayout layout) {
  if (layout == WeightLayout::Cutlass) return;
  const ByteMatrixShape rows = rows_of(shape, shape.k / 2);
  Tensor scratch;
  cuda::arrange_rows_cuda(packed, rows, nvfp4_row_order(layout, shape.gated), scratch_for(rows, scratch), nullptr);
}

void derive_block_scales_on_gpu(const uint8_t* raw, const Nvfp4MatrixShape& shape, WeightLayout layout,
                                uint8_t* derived) {
  const ByteMatrixShape scales = rows_of(shape, shape.scale_cols());
  Tensor scratch;
  cuda::derive_block_scales_cuda(raw, scales, nvfp4_row_order(layout, shape.gated), derived,
                                 scratch_for(scales, scratch), nullptr);
}

void derive_linear_alphas_on_gpu(const float* weight_scale_2, const float* input_scale, int64_t n_shards,
                                 bool static_activations, float* alpha, float* input_scale_inv) {
  cuda::derive_linear_alphas_cuda(weight_scale_2, input_scale, n_shards, static_activations, alpha, input_scale_inv,
                                  nullptr);
}

void derive_moe_alphas_on_gpu(const cuda::MoeAlphaArgs& args) { cuda::derive_moe_alphas_cuda(args); }
#else
namespace {
[[noreturn]] void no_cuda() { fail("NVFP4 post-processing on the GPU: this fp4serve was built without CUDA"); }
}  // namespace
void arrange_weight_rows_on_gpu(uint8_t*, const Nvfp4MatrixShape&, WeightLayout) { no_cuda(); }
void derive_block_scales_on_gpu(const uint8_t*, const Nvfp4MatrixShape&, WeightLayout, uint8_t*) { no_cuda(); }
void derive_linear_alphas_on_gpu(const float*, const float*, int64_t, bool, float*, float*) { no_cuda(); }
void derive_moe_alphas_on_gpu(const cuda::MoeAlphaArgs&) { no_cuda(); }
#endif

}  // namespace fp4serve
