// GPU activation quantization (static and per-token) against the CPU spec format/act_quant.h, bit for bit: packed
// codes, e4m3 block scales and per-row scales. Fresh random bf16 rows per case with planted edge cases (all-zero
// block and row, a block small enough for a subnormal or zero e4m3 scale, values that saturate to +-6 and a scale
// that saturates at 448, exact ties of the e2m1 rounding); outputs poisoned and fenced by guard bytes.
#include <gtest/gtest.h>

#include "kernels/device.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_test_support.h"
#include "format/act_quant.h"
#include "format/bf16.h"
#include "format/nvfp4.h"
#include "kernels/cuda/act_quant_cuda.h"
#endif

namespace fp4serve::test {
namespace {

#ifndef FP4SERVE_HAVE_CUDA
TEST(ActQuantCuda, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend (FP4SERVE_CUDA=OFF)"; }
#else

std::vector<bf16_bits> make_rows(int64_t rows, int64_t cols, Random& random) {
  std::vector<bf16_bits> x(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float row_scale = std::exp2(static_cast<float>(below(random, 24)) - 12.0f);  // 2^-12 .. 2^11
    for (int64_t c = 0; c < cols; ++c) x[r * cols + c] = float_to_bf16(random.normal() * row_scale);
  }
  // Planted cases, where the shape has room: row 0's first block zero, its second tiny; an all-zero last row; in row
  // 1 one block of ties (element = k/2 + 1/4 of the scale after rounding) and a block with a huge outlier.
  for (int64_t c = 0; c < 16; ++c) x[c] = 0;
  if (cols >= 32)
    for (int64_t c = 16; c < 32; ++c) x[c] = float_to_bf16(1e-30f * random.normal());
  if (rows >= 2) {
    for (int64_t c = 0; c < 16; ++c) x[cols + c] = float_to_bf16(0.25f + 0.5f * static_cast<float>(c % 12));
    if (cols >= 32) x[cols + 16] = float_to_bf16(3.0e4f);
  }
  if (rows >= 3)
    for (int64_t c = 0; c < cols; ++c) x[(rows - 1) * cols + c] = 0;
  return x;
}

std::vector<float> widened(const std::vector<bf16_bits>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = bf16_to_float(x[i]);
  return out;
}

struct Shape {
  int64_t rows, cols;
};
// Odd and real shapes: K = 16 * odd, one block, Qwen3-30B-A3B hidden (2048) and moe_intermediate (768), o_proj input.
const Shape kShapes[] = {{1, 16}, {3, 48}, {16, 2048}, {256, 768}, {5, 4096}, {33, 1040}};

struct DeviceQuantized {
  DeviceBytes x, packed, scales, row_scales;
  DeviceQuantized(const std::vector<bf16_bits>& host, Shape s)
      : x(host.size() * 2), packed(s.rows * s.cols / 2), scales(s.rows * s.cols / 16), row_scales(s.rows * 4) {
    x.upload(host);
    packed.fill(0xEE);
    scales.fill(0xEE);
    row_scales.fill(0xFF);
  }
  cuda::ActQuantArgs args(Shape s) {
    return {.x = x.data<bf16_bits>(), .rows = s.rows, .cols = s.cols, .packed = packed.data<uint8_t>(),
            .block_scales = scales.data<uint8_t>(), .stream = nullptr};
  }
  void expect_guards() {
    for (const DeviceBytes* b : {&packed, &scales, &row_scales}) EXPECT_TRUE(b->guards_intact());
  }
};

TEST(ActQuantCuda, StaticMatchesCpuBitForBit) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(11);
  for (const Shape s : kShapes)
    for (const float input_scale_factor : {1.0f, 0.01f, 1e3f}) {  // calibrated, saturating, many tiny scales
      SCOPED_TRACE("rows " + std::to_string(s.rows) + " cols " + std::to_string(s.cols) + " factor " +
                   std::to_string(input_scale_factor));
      const std::vector<bf16_bits> x = make_rows(s.rows, s.cols, random);
      const std::vector<float> x_float = widened(x);
      const float input_scale = nvfp4_global_scale(amax_abs(x.data(), s.rows * s.cols)) * input_scale_factor;
      std::vector<uint8_t> packed(s.rows * s.cols / 2), scales(s.rows * s.cols / 16);
      quantize_activations_static(x_float.data(), s.rows, s.cols, input_scale, packed.data(), scales.data());

      DeviceQuantized device(x, s);
      DeviceBytes scale(sizeof(float));
      scale.upload(std::vector<float>{input_scale});
      cuda::quantize_activations_static_cuda(device.args(s), scale.data<float>());
      check_cuda(cudaDeviceSynchronize(), "static quantization");
      EXPECT_EQ(device.packed.download<uint8_t>(), packed);
      EXPECT_EQ(device.scales.download<uint8_t>(), scales);
      device.expect_guards();
    }
}

TEST(ActQuantCuda, PerTokenMatchesCpuBitForBit) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(12);
  for (const Shape s : kShapes) {
    SCOPED_TRACE("rows " + std::to_string(s.rows) + " cols " + std::to_string(s.cols));
    const std::vector<bf16_bits> x = make_rows(s.rows, s.cols, random);
    const std::vector<float> x_float = widened(x);
    std::vector<uint8_t> packed(s.rows * s.cols / 2), scales(s.rows * s.cols / 16);
    std::vector<float> row_scales(s.rows);
    quantize_activations_per_token(x_float.data(), s.rows, s.cols, packed.data(), scales.data(), row_scales.data());

    DeviceQuantized device(x, s);
    cuda::quantize_activations_per_token_cuda(device.args(s), device.row_scales.data<float>());
    check_cuda(cudaDeviceSynchronize(), "per-token quantization");
    EXPECT_EQ(device.packed.download<uint8_t>(), packed);
    EXPECT_EQ(device.scales.download<uint8_t>(), scales);
    EXPECT_EQ(device.row_scales.download<float>(), row_scales);
    device.expect_guards();
  }
}

TEST(ActQuantCuda, ZeroRowsWritesNothing) {
  FP4_SKIP_WITHOUT_GPU();
  DeviceQuantized device(std::vector<bf16_bits>(32, 0x3F80), {2, 16});
  cuda::ActQuantArgs args = device.args({2, 16});
  args.rows = 0;
  cuda::quantize_activations_per_token_cuda(args, device.row_scales.data<float>());
  check_cuda(cudaDeviceSynchronize(), "sync");
  EXPECT_EQ(device.packed.download<uint8_t>(), std::vector<uint8_t>(16, 0xEE));
}

// Rejected on the host before any launch: no GPU needed.
TEST(ActQuantCuda, RejectsBadArgumentsNamingTheField) {
  cuda::ActQuantArgs args{.x = reinterpret_cast<const bf16_bits*>(uintptr_t{0x1000}), .rows = 4, .cols = 24,
                          .packed = reinterpret_cast<uint8_t*>(uintptr_t{0x2000}),
                          .block_scales = reinterpret_cast<uint8_t*>(uintptr_t{0x3000}), .stream = nullptr};
  const auto* scale = reinterpret_cast<const float*>(uintptr_t{0x4000});
  expect_error_naming([&] { cuda::quantize_activations_static_cuda(args, scale); }, "cols = 24");
  args.cols = 32;
  args.x = reinterpret_cast<const bf16_bits*>(uintptr_t{0x1008});
  expect_error_naming([&] { cuda::quantize_activations_static_cuda(args, scale); }, "x must be");
  args.x = reinterpret_cast<const bf16_bits*>(uintptr_t{0x1000});
  expect_error_naming([&] { cuda::quantize_activations_static_cuda(args, nullptr); }, "input_scale");
  expect_error_naming([&] { cuda::quantize_activations_per_token_cuda(args, nullptr); }, "row_scales");
}

#endif  // FP4SERVE_HAVE_CUDA

}  // namespace
}  // namespace fp4serve::test
