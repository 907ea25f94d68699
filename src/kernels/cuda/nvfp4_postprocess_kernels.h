// Launchers of the post-processing kernels, for nvfp4_postprocess.cpp (which validates and stages). Plain C++ types;
// arguments are trusted; every launch is asynchronous on `stream`.
#pragma once
#include <cstdint>

#include "kernels/cpu/nvfp4_gemm.h"
#include "kernels/cuda/nvfp4_postprocess.h"

namespace fp4serve::cuda {

// dst[e][physical(n)] = src[e][n] for whole rows of row_bytes; src and dst do not overlap.
void launch_scatter_rows(const uint8_t* src, uint8_t* dst, int64_t n_matrices, int32_t n_rows, int64_t row_bytes,
                         Nvfp4RowOrder order, void* stream);
// dst[e] (Np * Kp bytes, padding untouched) receives src[e] (linear [N, Kb]) swizzled over the physical rows.
void launch_scatter_scales(const uint8_t* src, uint8_t* dst, int64_t n_matrices, int32_t n_rows, int32_t scale_cols,
                           Nvfp4RowOrder order, void* stream);
void launch_linear_alphas(const float* weight_scale_2, const float* input_scale, int32_t n_shards,
                          bool static_activations, float* alpha, float* input_scale_inv, void* stream);
void launch_moe_alphas(const MoeAlphaArgs& args);

}  // namespace fp4serve::cuda
