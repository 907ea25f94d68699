#include "kernels/cpu/bf16_gemm.h"

#include "kernels/cpu/gemm_rows.h"  // first: sets the summation rules for this file

namespace fp4serve {

namespace {
struct Bf16GemmScratch {
  float* tiles;        // token tiles of x
  float* row_buffers;  // [threads, k] decoded weight rows
};
Bf16GemmScratch carve(ScratchCarver& carver, int64_t m, int64_t k) {
  Bf16GemmScratch s;
  s.tiles = carver.take<float>(token_tiles_floats(m, k));
  s.row_buffers = carver.take<float>(static_cast<size_t>(gemm_max_threads() * k));
  return s;
}
}  // namespace

size_t bf16_gemm_scratch_bytes(int64_t m, int64_t k) {
  ScratchCarver carver(nullptr);
  carve(carver, m, k);
  return carver.used();
}

void bf16_gemm_cpu(const float* x, int64_t m, int64_t k, const bf16_bits* weight, int64_t n_rows, float* y, int64_t ldy,
                   uint8_t* scratch) {
  ScratchCarver carver(scratch);
  const Bf16GemmScratch s = carve(carver, m, k);
  pack_token_tiles(x, k, nullptr, m, s.tiles);
  bf16_gemm_tiles_cpu(s.tiles, m, k, weight, n_rows, y, ldy, s.row_buffers);
}

void bf16_gemm_tiles_cpu(const float* tiles, int64_t m, int64_t k, const bf16_bits* weight, int64_t n_rows, float* y,
                         int64_t ldy, float* row_buffers) {
  gemm_decoded_rows(
      tiles, m, k, n_rows, row_buffers,
      [&](int64_t n, float* w) {
        const bf16_bits* row = weight + n * k;
        for (int64_t i = 0; i < k; ++i) w[i] = bf16_to_float(row[i]);
      },
      [&](int64_t t, int64_t n, float acc) { y[t * ldy + n] = round_to_bf16(acc); });
}

}  // namespace fp4serve
