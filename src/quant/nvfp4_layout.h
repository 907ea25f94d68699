// The post-processing layout of one NVFP4 weight (a linear: one matrix; MoE: one matrix per expert) under a
// WeightLayout, derived from the raw checkpoint bytes on every load, and its exact inverse for export_logical.
// Kernels read packed rows in nvfp4_row_order(...) and the derived scales swizzled (3a) over the same physical rows.
// All byte work is on host buffers; format/layout.h does every permutation.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/cpu/nvfp4_gemm.h"
#include "kernels/cuda/nvfp4_postprocess.h"
#include "quant/method.h"

namespace fp4serve {

struct Nvfp4MatrixShape {
  std::string name;        // parameter named in errors: "model.layers.0.mlp.experts.w13_weight"
  int64_t n_matrices = 1;  // E for MoE
  int64_t n_rows = 0;      // N (output features)
  int64_t k = 0;           // K (input features), a multiple of 16
  bool gated = false;      // MoE w13: gate rows [0, N/2), up rows [N/2, N); TRT-LLM interleaves them (3c)
  int64_t scale_cols() const { return k / 16; }
};

Nvfp4RowOrder nvfp4_row_order(WeightLayout layout, bool gated);
Nvfp4Activation nvfp4_activation(ActQuant mode);  // the kernels' name for an --act-quant mode

// Throws at create_weights, naming the parameter and the rule, when a shape cannot take the layout: TRT-LLM needs
// N % 32 == 0 (row shuffle). Scale shapes never fail: when N % 128 != 0 or (K/16) % 4 != 0 the swizzled scales
// get their own zero-padded buffer (for TRT-LLM: rows shuffled, then padded and swizzled), which is our fallback
// for shuffle_matrix_sf_a's N % 128 rule.
void check_nvfp4_layout(WeightLayout layout, const Nvfp4MatrixShape& shape);

// Shape of the derived scales: the source's [(E,) N, K/16] when swizzle_preserves_shape (so they alias it), else
// [(E,) Np, Kp] (swizzled_scale_shape).
Shape derived_scale_shape(const Nvfp4MatrixShape& shape);

// packed [E, N, K/2]: raw checkpoint row order <-> layout row order, in place. Identity for CUTLASS.
void arrange_weight_rows(uint8_t* packed, const Nvfp4MatrixShape& shape, WeightLayout layout);
void restore_weight_rows(uint8_t* packed, const Nvfp4MatrixShape& shape, WeightLayout layout);

// raw [E, N, K/16] linear scales -> derived [E, Np * Kp] (CUTLASS: swizzle; TRT-LLM: gated reorder if gated, row
// shuffle, swizzle), and back.
void derive_block_scales(const uint8_t* raw, const Nvfp4MatrixShape& shape, WeightLayout layout, uint8_t* derived);
void underive_block_scales(const uint8_t* derived, const Nvfp4MatrixShape& shape, WeightLayout layout, uint8_t* raw);

// The same derivations for parameters in device memory, on the GPU (kernels/cuda/nvfp4_postprocess.h, bit-identical
// to the host functions above), in place: pointers never change. derived == raw is allowed iff derived_scale_shape
// equals the raw shape. The alpha functions run the kernels of the same header. All are ordered on the legacy
// stream; a CPU-only build throws.
void arrange_weight_rows_on_gpu(uint8_t* packed, const Nvfp4MatrixShape& shape, WeightLayout layout);
void derive_block_scales_on_gpu(const uint8_t* raw, const Nvfp4MatrixShape& shape, WeightLayout layout,
                                uint8_t* derived);
void derive_linear_alphas_on_gpu(const float* weight_scale_2, const float* input_scale, int64_t n_shards,
                                 bool static_activations, float* alpha, float* input_scale_inv);
void derive_moe_alphas_on_gpu(const cuda::MoeAlphaArgs& args);
// A weight's block scales in the parameters, on the GPU: derived in place in `source` with `derived` registered as
// its alias when derived_scale_shape allows, else into `derived`'s own device buffer (created by the first load).
void derive_block_scale_param_on_gpu(ParameterSet& params, const std::string& source, const std::string& derived,
                                     const Nvfp4MatrixShape& shape, WeightLayout layout);

}  // namespace fp4serve
