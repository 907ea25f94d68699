// Host side of the q/k-norm + RoPE kernel: validation naming the field at fault, and the frequencies, computed by
// the CPU's own rope_inv_freq so that both backends rotate by the same fp32 values.
#ifdef FP4SERVE_HAVE_CUDA
#include "kernels/cuda/qk_norm_rope.h"

#include <cmath>
#include <vector>

#include "common/error.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/row_kernels.h"

namespace fp4serve::cuda {

void qk_norm_rope_cuda(const QkNormRopeArgs& a) {
  constexpr const char* op = "qk_norm_rope_cuda";
  FP4_CHECK(a.head_dim >= 2 && a.head_dim % 2 == 0 && a.head_dim <= kMaxRopeHeadDim,
            "{}: head_dim = {} must be even and in [2, {}]", op, a.head_dim, kMaxRopeHeadDim);
  FP4_CHECK(a.n_heads >= 1 && a.n_kv_heads >= 1, "{}: n_heads = {} and n_kv_heads = {} must be >= 1", op, a.n_heads,
            a.n_kv_heads);
  FP4_CHECK(a.n_tokens >= 0 && a.n_tokens <= (int64_t{1} << 31) - 1, "{}: n_tokens = {} is out of range", op,
            a.n_tokens);
  FP4_CHECK(std::isfinite(a.theta) && a.theta > 0.0, "{}: theta = {} must be finite and > 0 (rope_theta)", op, a.theta);
  FP4_CHECK(a.eps >= 0.0f, "{}: eps = {} must be >= 0 (rms_norm_eps)", op, a.eps);
  if (a.n_tokens == 0) return;
  FP4_CHECK(a.q != nullptr && a.k != nullptr && a.q_norm_weight != nullptr && a.k_norm_weight != nullptr &&
                a.positions != nullptr,
            "{}: q, k, q_norm_weight, k_norm_weight and positions must be device pointers", op);
  FP4_CHECK(a.q_row_stride >= a.n_heads * a.head_dim, "{}: q_row_stride = {} is smaller than {} heads x {}", op,
            a.q_row_stride, a.n_heads, a.head_dim);
  FP4_CHECK(a.k_row_stride >= a.n_kv_heads * a.head_dim, "{}: k_row_stride = {} is smaller than {} heads x {}", op,
            a.k_row_stride, a.n_kv_heads, a.head_dim);
  std::vector<float> inv_freq(static_cast<size_t>(a.head_dim / 2));
  for (int64_t i = 0; i < a.head_dim / 2; ++i) inv_freq[i] = rope_inv_freq(i, a.head_dim, a.theta);
  launch_qk_norm_rope(a, inv_freq.data());
}

}  // namespace fp4serve::cuda
#endif  // FP4SERVE_HAVE_CUDA
