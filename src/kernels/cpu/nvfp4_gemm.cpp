#include "kernels/cpu/nvfp4_gemm.h"

#include <array>

#include "common/error.h"
#include "format/act_quant.h"
#include "format/e2m1.h"
#include "format/e4m3.h"
#include "format/layout.h"
#include "format/nvfp4.h"
#include "kernels/cpu/gemm_rows.h"  // first: sets the summation rules for this file

namespace fp4serve {

int64_t nvfp4_physical_row(Nvfp4RowOrder order, int64_t logical_row, int64_t n_rows) {
  switch (order) {
    case Nvfp4RowOrder::Linear:
      return logical_row;
    case Nvfp4RowOrder::Shuffled:
      return shuffled_row_index(logical_row);
    case Nvfp4RowOrder::GatedShuffled:
      return shuffled_row_index(gated_reordered_row_index(logical_row, n_rows));
  }
  return logical_row;
}

namespace {

// Both values of a packed byte, low nibble (the even element) first: one load decodes two elements.
const std::array<std::array<float, 2>, 256> kE2M1PairValues = [] {
  std::array<std::array<float, 2>, 256> pairs{};
  for (int byte = 0; byte < 256; ++byte) pairs[byte] = {kE2M1Values[byte & 0xF], kE2M1Values[byte >> 4]};
  return pairs;
}();

struct ActivationScratch {
  uint8_t* packed;        // [m, k/2] e2m1
  uint8_t* block_scales;  // [m, k/16] e4m3
};
ActivationScratch carve_activation(ScratchCarver& carver, int64_t m, int64_t k) {
  ActivationScratch s;
  s.packed = carver.take<uint8_t>(static_cast<size_t>(m * k / 2));
  s.block_scales = carver.take<uint8_t>(static_cast<size_t>(m * k / kNvfp4BlockSize));
  return s;
}

struct LinearScratch {
  float* operand;     // [m, k]
  float* row_scales;  // [m]
  uint8_t* activation;
  float* tiles;
  float* row_buffers;
};
LinearScratch carve_linear(ScratchCarver& carver, int64_t m, int64_t k) {
  LinearScratch s;
  s.operand = carver.take<float>(static_cast<size_t>(m * k));
  s.row_scales = carver.take<float>(static_cast<size_t>(m));
  s.activation = carver.take<uint8_t>(nvfp4_activation_scratch_bytes(m, k));
  s.tiles = carver.take<float>(token_tiles_floats(m, k));
  s.row_buffers = carver.take<float>(static_cast<size_t>(gemm_max_threads() * k));
  return s;
}

}  // namespace

size_t nvfp4_activation_scratch_bytes(int64_t m, int64_t k) {
  ScratchCarver carver(nullptr);
  carve_activation(carver, m, k);
  return carver.used();
}

const float* nvfp4_activation_operand(Nvfp4Activation mode, const float* x, int64_t m, int64_t k, float input_scale,
                                      float* a, float* row_scales, uint8_t* scratch) {
  if (mode == Nvfp4Activation::Bf16) return x;
  ScratchCarver carver(scratch);
  const ActivationScratch s = carve_activation(carver, m, k);
  if (mode == Nvfp4Activation::Static)
    quantize_activations_static(x, m, k, input_scale, s.packed, s.block_scales);
  else
    quantize_activations_per_token(x, m, k, s.packed, s.block_scales, row_scales);
#pragma omp parallel for schedule(static) if (m * k >= kMinParallelWork)
  for (int64_t t = 0; t < m; ++t)
    for (int64_t i = 0; i < k; ++i)
      a[t * k + i] = e2m1_decode(packed_e2m1_code(s.packed + t * (k / 2), i)) *
                     e4m3_decode(s.block_scales[t * (k / kNvfp4BlockSize) + i / kNvfp4BlockSize]);
  return a;
}

void nvfp4_gemm_tiles_cpu(const float* tiles, const float* row_scales, int64_t m, const Nvfp4WeightView& weight,
                          int64_t first_row, int64_t n_rows, float alpha, float* y, int64_t ldy, float* row_buffers) {
  const int64_t k = weight.k, n_blocks = k / kNvfp4BlockSize;
  const int64_t padded_cols = swizzled_scale_shape(weight.n_rows, n_blocks).padded_cols;
  gemm_decoded_rows(
      tiles, m, k, n_rows, row_buffers,
      [&](int64_t j, float* w) {
        const int64_t row = nvfp4_physical_row(weight.row_order, first_row + j, weight.n_rows);
        const uint8_t* packed_row = weight.packed + row * (k / 2);
        for (int64_t b = 0; b < n_blocks; ++b) {
          const float scale = e4m3_decode(weight.block_scales[swizzled_scale_offset(row, b, padded_cols)]);
          for (int64_t i = 0; i < kNvfp4BlockSize / 2; ++i) {
            const std::array<float, 2>& pair = kE2M1PairValues[packed_row[b * (kNvfp4BlockSize / 2) + i]];
            w[b * kNvfp4BlockSize + 2 * i] = pair[0] * scale;
            w[b * kNvfp4BlockSize + 2 * i + 1] = pair[1] * scale;
          }
        }
      },
      [&](int64_t t, int64_t j, float acc) {
        const float scale = row_scales == nullptr ? alpha : row_scales[t] * alpha;
        y[t * ldy + j] = round_to_bf16(acc * scale);
      });
}

size_t nvfp4_linear_scratch_bytes(int64_t m, int64_t k) {
  ScratchCarver carver(nullptr);
  carve_linear(carver, m, k);
  return carver.used();
}

void nvfp4_linear_cpu(const Nvfp4LinearArgs& args) {
  const int64_t m = args.m, k = args.weight.k, n_total = args.weight.n_rows;
  FP4_CHECK(k % kNvfp4BlockSize == 0, "nvfp4_linear_cpu: K = {} is not a multiple of 16", k);
  ScratchCarver carver(args.scratch);
  const LinearScratch s = carve_linear(carver, m, k);
  const float* row_scales = args.activation == Nvfp4Activation::PerToken ? s.row_scales : nullptr;
  int64_t first_row = 0;
  float operand_input_scale = 0.0f;  // the input_scale the tiles were quantized with (Static)
  for (size_t i = 0; i < args.shards.size(); ++i) {
    const Nvfp4LinearShard& shard = args.shards[i];
    const bool needs_operand =
        i == 0 || (args.activation == Nvfp4Activation::Static && shard.input_scale != operand_input_scale);
    if (needs_operand) {
      const float* a = nvfp4_activation_operand(args.activation, args.x, m, k, shard.input_scale, s.operand,
                                                s.row_scales, s.activation);
      pack_token_tiles(a, k, nullptr, m, s.tiles);
      operand_input_scale = shard.input_scale;
    }
    nvfp4_gemm_tiles_cpu(s.tiles, row_scales, m, args.weight, first_row, shard.n_rows, shard.alpha, args.y + first_row,
                         n_total, s.row_buffers);
    first_row += shard.n_rows;
  }
  FP4_CHECK(first_row == n_total, "nvfp4_linear_cpu: shards cover {} rows, the weight has {}", first_row, n_total);
}

}  // namespace fp4serve
