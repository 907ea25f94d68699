// bf16-weight GEMM on the CPU (unquantized linears and experts): y = x W^T with fp32 accumulation in the order of
// gemm_rows.h, output rounded to bf16. Weights are read in place, activations are repacked in token tiles.
#pragma once
#include <cstddef>
#include <cstdint>

#include "format/bf16.h"

namespace fp4serve {

// Bytes of scratch bf16_gemm_cpu needs for m tokens of k features.
size_t bf16_gemm_scratch_bytes(int64_t m, int64_t k);

// y[t * ldy + n] = bf16(sum_k x[t, k] * weight[n, k]) for t < m, n < n_rows. x [m, k] f32 (bf16-representable),
// weight [n_rows, k] bf16, y [m, ldy] f32 (columns [0, n_rows) written), scratch: bf16_gemm_scratch_bytes(m, k).
// OpenMP over n; call from outside any parallel region.
void bf16_gemm_cpu(const float* x, int64_t m, int64_t k, const bf16_bits* weight, int64_t n_rows, float* y,
                   int64_t ldy, uint8_t* scratch);

// The same on token tiles of x (gemm_rows.h); row_buffers: gemm_max_threads() * k floats.
void bf16_gemm_tiles_cpu(const float* tiles, int64_t m, int64_t k, const bf16_bits* weight, int64_t n_rows, float* y,
                         int64_t ldy, float* row_buffers);

}  // namespace fp4serve
