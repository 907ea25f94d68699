// NVFP4-weight GEMM on the CPU: the executable spec of the CUDA kernels. It reads the packed weight and its swizzled
// block scales in either post-processing layout directly (logical row n is fetched from its physical row; no
// un-shuffled copy exists), dequantizes a row exactly (e2m1 * e4m3 in fp32) and accumulates in the order of
// gemm_rows.h, so CUTLASS and TRT-LLM layouts give bitwise-equal outputs. Outputs are rounded to bf16.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>

namespace fp4serve {

// Where logical row n of an [N, K/2] packed weight (and of its scales) is stored (nvfp4.md §3).
enum class Nvfp4RowOrder : uint8_t {
  Linear,         // CUTLASS path: row n
  Shuffled,       // TRT-LLM-gen: shuffled_row_index(n) (3b)
  GatedShuffled,  // TRT-LLM-gen MoE w13: shuffled_row_index(gated_reordered_row_index(n, N)) (3c, then 3b)
};
int64_t nvfp4_physical_row(Nvfp4RowOrder order, int64_t logical_row, int64_t n_rows);

struct Nvfp4WeightView {
  const uint8_t* packed;        // [n_rows, k/2] e2m1, low nibble first, rows in row_order
  const uint8_t* block_scales;  // [Np * Kp] e4m3 swizzled (3a) over the physical rows; (Np, Kp) =
                                // swizzled_scale_shape(n_rows, k/16)
  int64_t n_rows;               // N
  int64_t k;                    // K, a multiple of 16
  Nvfp4RowOrder row_order;
};

// What the GEMM multiplies the weight with (format/act_quant.h for the W4A4 contract).
enum class Nvfp4Activation : uint8_t {
  Bf16,      // W4A16: x itself
  Static,    // W4A4: x_q = e2m1 * e4m3 of x quantized with the global scale input_scale
  PerToken,  // W4A4: x_q of x quantized with each row's own s_t; the output row is also scaled by s_t
};

// The activation operand a [m, k] of `mode` for x [m, k]: returns x itself for Bf16, else `a` filled with x_q.
// row_scales [m] receives s_t (PerToken only). scratch: nvfp4_activation_scratch_bytes(m, k).
size_t nvfp4_activation_scratch_bytes(int64_t m, int64_t k);
const float* nvfp4_activation_operand(Nvfp4Activation mode, const float* x, int64_t m, int64_t k, float input_scale,
                                      float* a, float* row_scales, uint8_t* scratch);

// On token tiles (gemm_rows.h) of an operand: for t < m, j < n_rows,
//   y[t * ldy + j] = bf16(acc(t, first_row + j) * scale_t),  scale_t = row_scales ? row_scales[t] * alpha : alpha
// where acc sums a[t, k] * W_q[n, k], W_q = e2m1 * e4m3 (exact). row_buffers: gemm_max_threads() * k floats.
void nvfp4_gemm_tiles_cpu(const float* tiles, const float* row_scales, int64_t m, const Nvfp4WeightView& weight,
                          int64_t first_row, int64_t n_rows, float alpha, float* y, int64_t ldy, float* row_buffers);

// One fused linear: shards are stacked along the output rows, each with its own exact alpha (and, in Static mode,
// its own input_scale: the operand is re-quantized when it differs from the previous shard's).
struct Nvfp4LinearShard {
  int64_t n_rows;
  float alpha;        // input_scale * weight_scale_2 (Static) or weight_scale_2 (Bf16, PerToken)
  float input_scale;  // Static only
};
struct Nvfp4LinearArgs {
  const float* x;  // [m, weight.k] f32 (bf16-representable)
  int64_t m;
  Nvfp4WeightView weight;
  Nvfp4Activation activation;
  std::span<const Nvfp4LinearShard> shards;  // sum of n_rows == weight.n_rows
  float* y;                                  // [m, weight.n_rows] f32, bf16-representable
  uint8_t* scratch;                          // nvfp4_linear_scratch_bytes(m, weight.k)
};
size_t nvfp4_linear_scratch_bytes(int64_t m, int64_t k);
void nvfp4_linear_cpu(const Nvfp4LinearArgs& args);

}  // namespace fp4serve
