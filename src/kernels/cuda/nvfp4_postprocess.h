// NVFP4 post-processing on the GPU, run after every load and reload: the TRT-LLM row shuffle / gated reorder of packed
// weights (nvfp4.md 3b, 3c), the 128x4 block-scale swizzle over the same physical rows (3a), and the alpha
// derivations of quant/nvfp4_{linear,moe}.cpp; bit-identical to format/layout.h and quant/nvfp4_layout.cpp. In place
// means the same device pointers afterwards: matrices are staged through a caller-given device scratch of at least
// one matrix (nvfp4_postprocess_scratch_bytes); a larger scratch takes several matrices per pass. Host-only header.
#pragma once
#include <cstddef>
#include <cstdint>

#include "format/layout.h"
#include "kernels/cpu/nvfp4_gemm.h"

namespace fp4serve::cuda {

struct DeviceScratch {
  void* data = nullptr;  // device memory, 16-byte aligned
  size_t bytes = 0;
};

// Smallest scratch for in-place work on a tensor of this shape: one matrix, n_rows * row_bytes bytes (for Qwen3-30B
// MoE w13 packed weights: 1536 * 1024 = 1.5 MiB; its scales: 192 KiB).
size_t nvfp4_postprocess_scratch_bytes(const ByteMatrixShape& shape);

// Packed weights [E, N, K/2] (or any per-row data): row n moves to nvfp4_physical_row(order, n, N), in place.
// Linear is the identity (nothing runs); Shuffled and GatedShuffled (reorder, then shuffle) need N % 32 == 0.
// All calls are asynchronous on `stream` (cudaStream_t) and need no host synchronization.
void arrange_rows_cuda(uint8_t* data, const ByteMatrixShape& shape, Nvfp4RowOrder order, DeviceScratch scratch,
                       void* stream);

// Raw linear block scales [E, N, Kb] -> derived [E, Np * Kp] (swizzled_scale_shape(N, Kb)), element (n, k) at
// swizzled_scale_offset(nvfp4_physical_row(order, n, N), k, Kp), padding zeroed. derived == raw is allowed (in place,
// through the scratch) iff swizzle_preserves_shape(N, Kb); otherwise the buffers must not overlap and the scratch is
// unused.
void derive_block_scales_cuda(const uint8_t* raw, const ByteMatrixShape& shape, Nvfp4RowOrder order, uint8_t* derived,
                              DeviceScratch scratch, void* stream);

// quant/nvfp4_linear.cpp: alpha[s] = a_s * weight_scale_2[s], input_scale_inv[s] = 1 / a_s, a_s = input_scale[s]
// with static activation quantization, else 1. Every pointer is device memory of n_shards f32.
void derive_linear_alphas_cuda(const float* weight_scale_2, const float* input_scale, int64_t n_shards,
                               bool static_activations, float* alpha, float* input_scale_inv, void* stream);

// quant/nvfp4_moe.cpp's derived scalars (all device memory, f32).
struct MoeAlphaArgs {
  int64_t n_experts = 0;
  bool static_activations = false;         // else every input scale counts as 1
  const float* w13_weight_scale_2 = nullptr;  // [E, 2] gate, up
  const float* w13_input_scale = nullptr;     // [E, 2]
  const float* w2_weight_scale_2 = nullptr;   // [E]
  const float* w2_input_scale = nullptr;      // [E]
  float* w13_input_scale_reduced = nullptr;   // [1] max of w13_input_scale (static), else 1
  float* w2_input_scale_reduced = nullptr;    // [1]
  float* w13_input_scale_quant = nullptr;     // [1] 1 / w13_input_scale_reduced
  float* w2_input_scale_quant = nullptr;      // [1]
  float* g1_alphas = nullptr;                 // [E, 2] w13_input_scale_reduced * w13_weight_scale_2
  float* g2_alphas = nullptr;                 // [E] w2_input_scale_reduced * w2_weight_scale_2
  float* g1_scale_c = nullptr;                // [E, 2] w2_input_scale_quant * g1_alphas; may be null (CUTLASS)
  void* stream = nullptr;
};
void derive_moe_alphas_cuda(const MoeAlphaArgs& args);

}  // namespace fp4serve::cuda
