// Host side of the RMSNorm kernels: argument validation naming the field at fault.
#ifdef FP4SERVE_HAVE_CUDA
#include "kernels/cuda/norm.h"

#include "common/error.h"
#include "kernels/cuda/row_kernels.h"

namespace fp4serve::cuda {
namespace {

void check_rmsnorm(const bf16_bits* x, const bf16_bits* weight, int64_t rows, int64_t dim, float eps,
                   const bf16_bits* out, const char* op, const char* x_name) {
  FP4_CHECK(rows >= 0 && rows <= (int64_t{1} << 31) - 1, "{}: rows = {} is out of range", op, rows);
  FP4_CHECK(dim >= 1, "{}: dim = {} must be >= 1", op, dim);
  FP4_CHECK(eps >= 0.0f, "{}: eps = {} must be >= 0 (rms_norm_eps)", op, eps);
  if (rows == 0) return;
  FP4_CHECK(x != nullptr && weight != nullptr && out != nullptr, "{}: {}, weight and out must be device pointers", op,
            x_name);
}

}  // namespace

void rmsnorm_cuda(const bf16_bits* x, const bf16_bits* weight, int64_t rows, int64_t dim, float eps, bf16_bits* out,
                  void* stream) {
  check_rmsnorm(x, weight, rows, dim, eps, out, "rmsnorm_cuda", "x");
  launch_rmsnorm(nullptr, x, weight, rows, dim, eps, out, stream);
}

void fused_add_rmsnorm_cuda(bf16_bits* residual, const bf16_bits* delta, const bf16_bits* weight, int64_t rows,
                            int64_t dim, float eps, bf16_bits* out, void* stream) {
  constexpr const char* op = "fused_add_rmsnorm_cuda";
  check_rmsnorm(delta, weight, rows, dim, eps, out, op, "delta");
  FP4_CHECK(rows == 0 || (residual != nullptr && residual != delta && residual != out),
            "{}: residual must be a device pointer distinct from delta and out", op);
  launch_rmsnorm(residual, delta, weight, rows, dim, eps, out, stream);
}

}  // namespace fp4serve::cuda
#endif  // FP4SERVE_HAVE_CUDA
