// RMSNorm on the GPU (plain, in place, and fused with the residual add) against the CPU kernels rmsnorm_cpu and
// residual_add_cpu. The residual sum is exact math on bf16 inputs, so it must match bit for bit; the normalized output
// may differ by the rounding steps that a last-ulp difference of the fp32 statistic can move (two bf16 roundings).
// Fresh random rows (scales 2^-8 .. 2^8) per case; outputs poisoned and fenced by guard bytes.
#include <gtest/gtest.h>

#include "kernels/device.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_test_support.h"
#include "format/bf16.h"
#include "gpu_ops_test_util.h"
#include "kernels/cpu/residual_add.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cuda/norm.h"
#endif

namespace fp4serve::test {
namespace {

#ifndef FP4SERVE_HAVE_CUDA
TEST(NormCuda, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend (FP4SERVE_CUDA=OFF)"; }
#else

constexpr double kRelative = 0x1p-6, kAbsolute = 1e-6;
constexpr float kEps = 1e-6f;  // Qwen3's rms_norm_eps

struct Shape {
  int64_t rows, dim;
};
// Qwen3-30B-A3B hidden (2048) at decode and prefill sizes, a head (128), odd dims, one element.
const Shape kShapes[] = {{1, 2048}, {64, 2048}, {5, 4096}, {33, 1000}, {300, 128}, {3, 1}, {2, 257}};

std::vector<bf16_bits> random_rows(const Shape& shape, Random& random) {
  std::vector<bf16_bits> x(static_cast<size_t>(shape.rows * shape.dim));
  for (int64_t r = 0; r < shape.rows; ++r) {
    const float scale = std::exp2(static_cast<float>(below(random, 17)) - 8.0f);
    for (int64_t i = 0; i < shape.dim; ++i) x[r * shape.dim + i] = float_to_bf16(scale * random.normal());
  }
  return x;
}

std::vector<bf16_bits> random_weight(int64_t dim, Random& random) {
  std::vector<bf16_bits> w(static_cast<size_t>(dim));
  for (auto& x : w) x = float_to_bf16(1.0f + 0.3f * random.normal());
  return w;
}

std::string name(const Shape& shape) { return std::to_string(shape.rows) + "x" + std::to_string(shape.dim); }

TEST(NormCuda, RmsnormMatchesCpu) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(21);
  for (const Shape& shape : kShapes) {
    const std::vector<bf16_bits> x = random_rows(shape, random), w = random_weight(shape.dim, random);
    std::vector<float> reference = widened(x);
    rmsnorm_cpu(reference.data(), w.data(), shape.rows, shape.dim, kEps, reference.data());
    DeviceBytes x_device(x.size() * 2), w_device(w.size() * 2), out(x.size() * 2);
    x_device.upload(x);
    w_device.upload(w);
    out.fill(0xff);
    cuda::rmsnorm_cuda(x_device.data<bf16_bits>(), w_device.data<bf16_bits>(), shape.rows, shape.dim, kEps,
                       out.data<bf16_bits>(), nullptr);
    check_cuda(cudaDeviceSynchronize(), "rmsnorm");
    const int64_t different = expect_bf16_near(out.download<bf16_bits>(), reference, kRelative, kAbsolute, name(shape));
    EXPECT_LE(different, static_cast<int64_t>(x.size()) / 100 + 2) << name(shape);
    EXPECT_TRUE(out.guards_intact() && x_device.guards_intact()) << name(shape);
    EXPECT_TRUE(x_device.download<bf16_bits>() == x) << name(shape) << ": input modified";

    // In place (x and out alias): the same bits as out of place.
    cuda::rmsnorm_cuda(x_device.data<bf16_bits>(), w_device.data<bf16_bits>(), shape.rows, shape.dim, kEps,
                       x_device.data<bf16_bits>(), nullptr);
    EXPECT_TRUE(x_device.download<bf16_bits>() == out.download<bf16_bits>()) << name(shape) << " in place";
  }
}

TEST(NormCuda, FusedAddRmsnormMatchesResidualAddThenRmsnorm) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(22);
  for (const Shape& shape : kShapes) {
    const std::vector<bf16_bits> residual = random_rows(shape, random), delta = random_rows(shape, random),
                                 w = random_weight(shape.dim, random);
    std::vector<float> sum = widened(residual), reference(sum.size());
    residual_add_cpu(sum.data(), widened(delta).data(), static_cast<int64_t>(sum.size()));
    rmsnorm_cpu(sum.data(), w.data(), shape.rows, shape.dim, kEps, reference.data());
    DeviceBytes residual_device(residual.size() * 2), delta_device(delta.size() * 2), w_device(w.size() * 2),
        out(residual.size() * 2);
    residual_device.upload(residual);
    delta_device.upload(delta);
    w_device.upload(w);
    out.fill(0xff);
    cuda::fused_add_rmsnorm_cuda(residual_device.data<bf16_bits>(), delta_device.data<bf16_bits>(),
                                 w_device.data<bf16_bits>(), shape.rows, shape.dim, kEps, out.data<bf16_bits>(),
                                 nullptr);
    check_cuda(cudaDeviceSynchronize(), "fused_add_rmsnorm");
    const std::vector<bf16_bits> new_residual = residual_device.download<bf16_bits>();
    EXPECT_TRUE(widened(new_residual) == sum) << name(shape) << ": residual differs from residual_add_cpu";
    const int64_t different = expect_bf16_near(out.download<bf16_bits>(), reference, kRelative, kAbsolute, name(shape));
    EXPECT_LE(different, static_cast<int64_t>(residual.size()) / 100 + 2) << name(shape);
    EXPECT_TRUE(out.guards_intact() && residual_device.guards_intact()) << name(shape);
  }
}

TEST(NormCuda, RejectsBadArgumentsNamingTheField) {
  FP4_SKIP_WITHOUT_GPU();
  DeviceBytes a(256), b(256), w(256);
  bf16_bits* x = a.data<bf16_bits>();
  const bf16_bits* weight = w.data<bf16_bits>();
  expect_error_naming([&] { cuda::rmsnorm_cuda(x, weight, 2, 0, kEps, x, nullptr); }, "dim = 0");
  expect_error_naming([&] { cuda::rmsnorm_cuda(x, weight, 2, 8, -1.0f, x, nullptr); }, "eps = -1");
  expect_error_naming([&] { cuda::rmsnorm_cuda(x, nullptr, 2, 8, kEps, x, nullptr); }, "weight");
  expect_error_naming([&] { cuda::fused_add_rmsnorm_cuda(x, x, weight, 2, 8, kEps, b.data<bf16_bits>(), nullptr); },
                      "residual must be");
  cuda::rmsnorm_cuda(nullptr, nullptr, 0, 8, kEps, nullptr, nullptr);  // no rows: nothing to check or do
}

#endif  // FP4SERVE_HAVE_CUDA

}  // namespace
}  // namespace fp4serve::test
