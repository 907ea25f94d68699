// Host side of the grouped NVFP4 GEMM: validates what the host can see (shapes, pointers, alignment; device-side
// offsets and alphas are trusted) and launches the fused kernel over (expert, token tile) work items.
#ifdef FP4SERVE_HAVE_CUDA
#include "kernels/cuda/nvfp4_grouped_gemm.h"

#include <cstdint>

#include "common/error.h"
#include "kernels/cuda/nvfp4_kernels.h"

namespace fp4serve::cuda {
namespace {

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

void nvfp4_grouped_gemm_w4a16(Nvfp4GemmContext& /*context*/, const Nvfp4GroupedGemmArgs& a) {
  FP4_CHECK(a.k >= 16 && a.k % 16 == 0 && a.k <= (int64_t{1} << 30),
            "nvfp4_grouped_gemm_w4a16: k = {} must be a positive multiple of 16 (the NVFP4 block size)", a.k);
  FP4_CHECK(a.n >= 1 && a.n <= kMaxNvfp4Rows, "nvfp4_grouped_gemm_w4a16: n = {} is not in [1, {}]", a.n,
            kMaxNvfp4Rows);
  FP4_CHECK(a.n_experts >= 1 && a.n_experts <= (int64_t{1} << 20),
            "nvfp4_grouped_gemm_w4a16: n_experts = {} is out of range", a.n_experts);
  FP4_CHECK(a.max_rows >= 0 && a.max_rows <= (int64_t{1} << 28),
            "nvfp4_grouped_gemm_w4a16: max_rows = {} is out of range", a.max_rows);
  FP4_CHECK(a.n_experts * a.n * a.k / 2 < (int64_t{1} << 40), "nvfp4_grouped_gemm_w4a16: weights [{}, {}, {}] are "
            "too large", a.n_experts, a.n, a.k);
  FP4_CHECK(a.alphas_per_expert == 1 || (a.alphas_per_expert == 2 && a.n % 2 == 0),
            "nvfp4_grouped_gemm_w4a16: alphas_per_expert = {} must be 1, or 2 with an even n (got n = {})",
            a.alphas_per_expert, a.n);
  if (a.row_order != Nvfp4RowOrder::Linear)
    FP4_CHECK(a.n % 32 == 0, "nvfp4_grouped_gemm_w4a16: row_order is a TRT-LLM shuffle, which needs n % 32 == 0 "
              "(got {})", a.n);
  if (a.max_rows == 0) return;
  FP4_CHECK(a.x != nullptr && aligned(a.x, 16),
            "nvfp4_grouped_gemm_w4a16: x must be a non-null 16-byte aligned device pointer");
  FP4_CHECK(a.y != nullptr && aligned(a.y, 2),
            "nvfp4_grouped_gemm_w4a16: y must be a non-null 2-byte aligned device pointer");
  FP4_CHECK(a.expert_offsets != nullptr && aligned(a.expert_offsets, 4),
            "nvfp4_grouped_gemm_w4a16: expert_offsets must be a non-null device pointer to n_experts + 1 int32");
  FP4_CHECK(a.packed != nullptr && aligned(a.packed, 8),
            "nvfp4_grouped_gemm_w4a16: packed must be a non-null 8-byte aligned device pointer");
  FP4_CHECK(a.block_scales != nullptr && aligned(a.block_scales, 4),
            "nvfp4_grouped_gemm_w4a16: block_scales must be a non-null 4-byte aligned device pointer");
  FP4_CHECK(a.alphas != nullptr && aligned(a.alphas, 4),
            "nvfp4_grouped_gemm_w4a16: alphas must be a non-null device pointer to n_experts * alphas_per_expert "
            "floats");
  const Nvfp4GroupedLaunchArgs launch{a.x,
                                      static_cast<int32_t>(a.max_rows),
                                      a.expert_offsets,
                                      static_cast<int32_t>(a.n_experts),
                                      a.packed,
                                      a.block_scales,
                                      static_cast<int32_t>(a.n),
                                      static_cast<int32_t>(a.k),
                                      a.row_order,
                                      a.alphas,
                                      static_cast<int32_t>(a.alphas_per_expert),
                                      a.y,
                                      a.stream};
  const int64_t rows_per_expert = (a.max_rows + a.n_experts - 1) / a.n_experts;
  launch_nvfp4_grouped(launch, a.batch_invariant ? nvfp4_batch_invariant_tile(rows_per_expert)
                                                 : nvfp4_grouped_config_for(a.max_rows, a.n_experts, a.n, a.k));
}

}  // namespace fp4serve::cuda
#endif  // FP4SERVE_HAVE_CUDA
