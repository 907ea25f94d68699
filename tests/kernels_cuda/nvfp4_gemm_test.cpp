// NVFP4 W4A16 GEMM paths (Auto, the fused kernel in every tile configuration and K split, the streaming kernel with
// few warps, dequantize + cuBLAS, and the batch-invariant path's rows against single runs) against a float64 CPU
// reference: weights quantized by format/nvfp4.h and
// dequantized from the LINEAR scale layout (so the kernels' swizzle and row-shuffle indexing is checked
// independently), x . W^T summed in double. Fresh random inputs per case; outputs are poisoned (NaN) before a run and
// fenced by guard bytes; the swizzled scales' padding is poisoned with e4m3 NaN.
#include <gtest/gtest.h>

#include "kernels/device.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/cuda/nvfp4_gemm.h"
#include "kernels/cuda/nvfp4_kernels.h"
#include "tests/kernels_cuda/nvfp4_test_util.h"
#endif

namespace fp4serve {
namespace {

#ifndef FP4SERVE_HAVE_CUDA
TEST(Nvfp4GemmCuda, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend (FP4SERVE_CUDA=OFF)"; }
#else

using namespace fp4serve::test;

#define SKIP_WITHOUT_GPU()                                                                         \
  if (cuda_device_count() == 0)                                                                    \
  GTEST_SKIP() << "no CUDA device on this machine; the NVFP4 GEMM tests run on the device machine"

enum class Kernel { Auto, Fused, StreamingFewWarps, DequantCublas };
const char* kernel_name(Kernel kernel) {
  switch (kernel) {
    case Kernel::Auto: return "Auto";
    case Kernel::Fused: return "Fused";
    case Kernel::StreamingFewWarps: return "StreamingFewWarps";
    case Kernel::DequantCublas: return "DequantCublas";
  }
  return "?";
}

// Split-K workspace for forced fused configurations (the public path keeps its own in the context).
struct SplitWorkspace {
  GuardedBuffer partials, counters;
  explicit SplitWorkspace(const cuda::Nvfp4FusedWorkspaceSize& size)
      : partials(static_cast<size_t>(std::max<int64_t>(size.partial_floats, 1)) * sizeof(float)),
        counters(static_cast<size_t>(std::max<int64_t>(size.counters, 1)) * sizeof(int32_t)) {
    partials.fill(0xFF);  // NaN: a partial read before it is written shows
    counters.fill(0);
  }
};

void run_kernel(Kernel kernel, const cuda::Nvfp4FusedConfig& fused, cuda::Nvfp4GemmContext& context,
                const cuda::Nvfp4GemmArgs& args) {
  const bool public_fused = kernel == Kernel::Fused && fused.token_tiles == 0;
  if (kernel == Kernel::Auto || kernel == Kernel::DequantCublas || public_fused) {
    cuda::Nvfp4GemmArgs public_args = args;
    public_args.path = kernel == Kernel::Auto            ? cuda::Nvfp4GemmPath::Auto
                       : kernel == Kernel::DequantCublas ? cuda::Nvfp4GemmPath::DequantCublas
                                                         : cuda::Nvfp4GemmPath::Fused;
    cuda::nvfp4_gemm_w4a16(context, public_args);
    return;
  }
  // The other kernels are reached directly, so that every tile shape is covered whatever Auto would pick.
  cuda::Nvfp4LaunchArgs launch{};
  launch.x = args.x;
  launch.m = static_cast<int32_t>(args.m);
  launch.packed = args.weight.packed;
  launch.block_scales = args.weight.block_scales;
  launch.n = static_cast<int32_t>(args.weight.n_rows);
  launch.k = static_cast<int32_t>(args.weight.k);
  launch.order = args.weight.row_order;
  launch.alphas.count = static_cast<int32_t>(args.alphas.size());
  for (size_t i = 0; i < args.alphas.size(); ++i) {
    launch.alphas.row_end[i] = static_cast<int32_t>(args.alphas[i].row_end);
    launch.alphas.alpha[i] = args.alphas[i].alpha;
  }
  launch.y = args.y;
  if (kernel == Kernel::StreamingFewWarps) {
    cuda::launch_nvfp4_streaming(launch, 3);
    return;
  }
  // Twice: the second launch finds the split counters the first one left (they must be back at zero).
  SplitWorkspace workspace(cuda::nvfp4_fused_workspace_size(args.m, args.weight.n_rows, fused));
  for (int launch_index = 0; launch_index < 2; ++launch_index)
    cuda::launch_nvfp4_fused(launch, fused, workspace.partials.data<float>(), workspace.counters.data<int32_t>());
  check_cuda(cudaDeviceSynchronize(), "fused kernel");
  EXPECT_TRUE(workspace.partials.guards_intact() && workspace.counters.guards_intact()) << "workspace overrun";
}

struct GemmCase {
  std::string shape_name;  // Qwen3-30B-A3B layer, or "odd"
  int64_t k;
  std::vector<Shard> shards;
  int64_t m;
  Kernel kernel;
  Nvfp4RowOrder order;
  cuda::Nvfp4FusedConfig fused{};  // Kernel::Fused only
};

std::string case_name(const testing::TestParamInfo<GemmCase>& info) {
  const GemmCase& c = info.param;
  const char* order = c.order == Nvfp4RowOrder::Linear ? "" : c.order == Nvfp4RowOrder::Shuffled ? "_shuffled"
                                                                                                  : "_gated";
  std::string config;
  if (c.kernel == Kernel::Fused && c.fused.token_tiles != 0)
    config = "_t" + std::to_string(c.fused.token_tiles) + "w" + std::to_string(c.fused.warps_n) + "s" +
             std::to_string(c.fused.k_splits) + (c.fused.row_tiles == 2 ? "r2" : "");
  return c.shape_name + "_m" + std::to_string(c.m) + "_" + kernel_name(c.kernel) + config + order;
}

class Nvfp4GemmTest : public testing::TestWithParam<GemmCase> {};

TEST_P(Nvfp4GemmTest, MatchesFloat64Reference) {
  SKIP_WITHOUT_GPU();
  const GemmCase& c = GetParam();
  Random random(std::hash<std::string>{}(case_name({c, 0})));
  const HostWeight w = make_weight(c.k, c.shards, random);
  const DeviceWeight device_weight(w, c.order);
  const std::vector<bf16_bits> x = random_activations(c.m, c.k, random);
  GuardedBuffer x_device(x.size() * sizeof(bf16_bits)), y_device(static_cast<size_t>(c.m * w.n) * sizeof(bf16_bits));
  x_device.upload(x.data());
  y_device.fill(0xFF);  // bf16 NaN: an element the kernel does not write fails the comparison

  cuda::Nvfp4GemmContext context;
  cuda::Nvfp4GemmArgs args;
  args.x = x_device.data<bf16_bits>();
  args.m = c.m;
  args.weight = {device_weight.packed.data<uint8_t>(), device_weight.scales.data<uint8_t>(), w.n, w.k, c.order};
  args.alphas = w.alphas;
  args.y = y_device.data<bf16_bits>();
  run_kernel(c.kernel, c.fused, context, args);
  check_cuda(cudaDeviceSynchronize(), "kernel");
  std::vector<bf16_bits> y(c.m * w.n);
  y_device.download(y.data());
  EXPECT_TRUE(y_device.guards_intact()) << "the kernel wrote outside y";

  // Every token for small m; for large m a fixed sample including the first and last (keeps the test fast).
  std::vector<int64_t> tokens;
  for (int64_t t = 0; t < c.m; t += c.m <= 16 ? 1 : c.m / 13) tokens.push_back(t);
  if (tokens.back() != c.m - 1) tokens.push_back(c.m - 1);
  expect_rows_match_reference(w, x.data(), y.data(), tokens, case_name({c, 0}));
}

std::vector<GemmCase> gemm_cases() {
  struct Layer {
    std::string name;
    int64_t k;
    std::vector<Shard> shards;
  };
  // Qwen3-30B-A3B: fused q/k/v (three alphas), o_proj, one expert's gate/up (two alphas) and down; then odd shapes
  // whose scales need padding in both directions: 96 rows with K/16 = 3 blocks, and 200 rows (not a multiple of 32)
  // with K = 16 * 13 (not a multiple of 32: the 8-byte copy path, a half-filled last chunk).
  const std::vector<Layer> layers = {
      {"qkv", 2048, {{4096, 0.02f}, {512, 0.05f}, {512, 0.01f}}},
      {"o_proj", 4096, {{2048, 0.02f}}},
      {"gate_up", 2048, {{768, 0.03f}, {768, 0.015f}}},
      {"down", 768, {{2048, 0.04f}}},
      {"odd", 48, {{96, 1.0f}}},
      {"odd200", 208, {{136, 0.5f}, {64, 2.0f}}},
  };
  std::vector<GemmCase> cases;
  for (const Layer& layer : layers)
    for (int64_t m : {1, 3, 16, 100, 512}) {
      // Auto; the fused kernel with its rule's configuration (Kernel::Fused with token_tiles 0) and the cuBLAS
      // path at every m, and the streaming kernel with 3 warps per CTA (several batches of steps per warp, warps'
      // steps interleaved) wherever it applies.
      std::vector<Kernel> kernels = {Kernel::Auto, Kernel::Fused, Kernel::DequantCublas};
      if (m <= cuda::kNvfp4StreamingMaxTokens) kernels.push_back(Kernel::StreamingFewWarps);
      for (Kernel kernel : kernels)
        cases.push_back({layer.name, layer.k, layer.shards, m, kernel, Nvfp4RowOrder::Linear});
    }
  // Every fused configuration, unsplit and split as far as K allows (two m16 tiles per warp: unsplit and fully
  // split), on shapes with tails in N, K and M.
  for (int token_tiles : {1, 2, 4, 8})
    for (int warps_n : {8, 4, 2})
      for (const Layer* layer : {&layers[3], &layers[4], &layers[5]})
        for (int64_t m : {5, 8 * token_tiles + 3}) {
          const int max_splits = cuda::nvfp4_fused_max_splits(layer->k, warps_n);
          for (int splits : std::set<int>{1, std::min(3, max_splits), max_splits})
            cases.push_back({layer->name, layer->k, layer->shards, m, Kernel::Fused, Nvfp4RowOrder::Linear,
                             {token_tiles, warps_n, splits, 1}});
          for (int splits : std::set<int>{1, max_splits})
            cases.push_back({layer->name, layer->k, layer->shards, m, Kernel::Fused, Nvfp4RowOrder::Linear,
                             {token_tiles, warps_n, splits, 2}});
        }
  // TRT-LLM layouts (n % 128 == 0): a plain shuffle on qkv, the gated reorder + shuffle on gate_up.
  for (Kernel kernel : {Kernel::Auto, Kernel::StreamingFewWarps, Kernel::DequantCublas}) {
    cases.push_back({"qkv", 2048, layers[0].shards, 3, kernel, Nvfp4RowOrder::Shuffled});
    cases.push_back({"gate_up", 2048, layers[2].shards, 16, kernel, Nvfp4RowOrder::GatedShuffled});
  }
  for (const cuda::Nvfp4FusedConfig config :
       {cuda::Nvfp4FusedConfig{1, 2, 2, 1}, cuda::Nvfp4FusedConfig{8, 8, 3, 1}, cuda::Nvfp4FusedConfig{2, 4, 2, 2},
        cuda::Nvfp4FusedConfig{8, 4, 1, 2}}) {
    cases.push_back({"qkv", 2048, layers[0].shards, 40, Kernel::Fused, Nvfp4RowOrder::Shuffled, config});
    cases.push_back({"gate_up", 2048, layers[2].shards, 70, Kernel::Fused, Nvfp4RowOrder::GatedShuffled, config});
  }
  cases.push_back({"gate_up", 2048, layers[2].shards, 512, Kernel::Auto, Nvfp4RowOrder::GatedShuffled});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Qwen3Shapes, Nvfp4GemmTest, testing::ValuesIn(gemm_cases()), case_name);

// The measured rule (bench/RESULTS.md, H100) on the benchmark's shapes; Streaming never past its token limit.
TEST(Nvfp4GemmCuda, AutoPathFollowsTheMeasuredRule) {
  using cuda::Nvfp4GemmPath;
  EXPECT_EQ(cuda::nvfp4_gemm_auto_path(1, 5120, 2048), Nvfp4GemmPath::Streaming);
  EXPECT_EQ(cuda::nvfp4_gemm_auto_path(8, 8192, 8192), Nvfp4GemmPath::Streaming);
  EXPECT_EQ(cuda::nvfp4_gemm_auto_path(16, 2048, 4096), Nvfp4GemmPath::Fused);
  EXPECT_EQ(cuda::nvfp4_gemm_auto_path(64, 5120, 2048), Nvfp4GemmPath::Fused);
  EXPECT_EQ(cuda::nvfp4_gemm_auto_path(16, 8192, 8192), Nvfp4GemmPath::Fused);
  EXPECT_EQ(cuda::nvfp4_gemm_auto_path(1, 151936, 2048), Nvfp4GemmPath::Fused);
  EXPECT_EQ(cuda::nvfp4_gemm_auto_path(128, 28672, 8192), Nvfp4GemmPath::Fused);
  EXPECT_EQ(cuda::nvfp4_gemm_auto_path(129, 28672, 8192), Nvfp4GemmPath::DequantCublas);
  EXPECT_EQ(cuda::nvfp4_gemm_auto_path(4096, 96, 48), Nvfp4GemmPath::DequantCublas);
  for (int64_t m = 1; m <= 256; ++m)
    for (int64_t n : {96, 5120, 151936}) {
      if (cuda::nvfp4_gemm_auto_path(m, n, 2048) == Nvfp4GemmPath::Streaming) {
        EXPECT_LE(m, cuda::kNvfp4StreamingMaxTokens) << "m " << m << ", n " << n;
      }
    }
}

TEST(Nvfp4GemmCuda, ZeroTokensWritesNothing) {
  SKIP_WITHOUT_GPU();
  Random random(7);
  const HostWeight w = make_weight(64, {{32, 1.0f}}, random);
  const DeviceWeight device_weight(w, Nvfp4RowOrder::Linear);
  GuardedBuffer x_device(64 * sizeof(bf16_bits)), y_device(32 * sizeof(bf16_bits));
  y_device.fill(0x11);
  cuda::Nvfp4GemmContext context;
  cuda::Nvfp4GemmArgs args;
  args.x = x_device.data<bf16_bits>();
  args.weight = {device_weight.packed.data<uint8_t>(), device_weight.scales.data<uint8_t>(), w.n, w.k,
                 Nvfp4RowOrder::Linear};
  args.alphas = w.alphas;
  args.y = y_device.data<bf16_bits>();
  cuda::nvfp4_gemm_w4a16(context, args);
  check_cuda(cudaDeviceSynchronize(), "sync");
  std::vector<bf16_bits> y(32);
  y_device.download(y.data());
  EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](bf16_bits v) { return v == 0x1111; }));
  EXPECT_TRUE(y_device.guards_intact());
}

// With device_alphas, a call captured in a CUDA graph reads the alphas when the graph replays: rewriting them in place
// (what a reload does) changes a replay's output exactly as an eager call with the new host alphas would. Each path
// at an m it serves; the eager host-alpha results are the reference (bitwise: the same products in the same order).
TEST(Nvfp4GemmCuda, DeviceAlphasInACapturedGraphFollowRewrites) {
  SKIP_WITHOUT_GPU();
  const int64_t k = 272;  // 16 * 17
  for (const auto& [path, m] : {std::pair{cuda::Nvfp4GemmPath::Streaming, int64_t{3}},
                                std::pair{cuda::Nvfp4GemmPath::Fused, int64_t{40}},
                                std::pair{cuda::Nvfp4GemmPath::DequantCublas, int64_t{200}}}) {
    SCOPED_TRACE("path " + std::to_string(static_cast<int>(path)) + ", m " + std::to_string(m));
    Random random(static_cast<uint64_t>(m));
    HostWeight w = make_weight(k, {{96, 0.75f}, {64, 1.5f}}, random);
    const DeviceWeight device_weight(w, Nvfp4RowOrder::Linear);
    const std::vector<bf16_bits> x = random_activations(m, k, random);
    const size_t y_bytes = static_cast<size_t>(m * w.n) * sizeof(bf16_bits);
    GuardedBuffer x_device(x.size() * sizeof(bf16_bits)), y_device(y_bytes), alphas_device(2 * sizeof(float));
    x_device.upload(x.data());
    cudaStream_t stream = nullptr;
    check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    cuda::Nvfp4GemmContext context;
    cuda::Nvfp4GemmArgs args;
    args.x = x_device.data<bf16_bits>();
    args.m = m;
    args.weight = {device_weight.packed.data<uint8_t>(), device_weight.scales.data<uint8_t>(), w.n, w.k,
                   Nvfp4RowOrder::Linear};
    args.y = y_device.data<bf16_bits>();
    args.stream = stream;
    args.path = path;
    auto eager_with_host_alphas = [&](float first, float second) {
      const std::vector<cuda::Nvfp4AlphaRange> alphas = {{96, first}, {160, second}};
      cuda::Nvfp4GemmArgs host = args;
      host.alphas = alphas;
      y_device.fill(0xFF);
      cuda::nvfp4_gemm_w4a16(context, host);
      check_cuda(cudaStreamSynchronize(stream), "eager run");
      std::vector<bf16_bits> y(static_cast<size_t>(m * w.n));
      y_device.download(y.data());
      return y;
    };
    auto set_device_alphas = [&](float first, float second) {
      const float values[2] = {first, second};
      alphas_device.upload(values);
    };
    const std::vector<bf16_bits> before = eager_with_host_alphas(0.75f, 1.5f);
    const std::vector<bf16_bits> after = eager_with_host_alphas(-0.3125f, 3.0f);
    ASSERT_NE(before, after);

    // Host alphas' values are ignored once device alphas are given: NaN here must not show.
    const std::vector<cuda::Nvfp4AlphaRange> ranges = {{96, std::nanf("")}, {160, std::nanf("")}};
    args.alphas = ranges;
    args.device_alphas = alphas_device.data<float>();
    set_device_alphas(0.75f, 1.5f);
    cuda::nvfp4_gemm_w4a16(context, args);  // warm-up: workspaces are allocated outside the capture
    check_cuda(cudaStreamSynchronize(stream), "warm-up");
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
    cuda::nvfp4_gemm_w4a16(context, args);
    check_cuda(cudaStreamEndCapture(stream, &graph), "end capture");
    check_cuda(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
    auto replay = [&] {
      y_device.fill(0xFF);
      check_cuda(cudaGraphLaunch(exec, stream), "graph launch");
      check_cuda(cudaStreamSynchronize(stream), "replay");
      std::vector<bf16_bits> y(static_cast<size_t>(m * w.n));
      y_device.download(y.data());
      return y;
    };
    EXPECT_EQ(replay(), before);
    set_device_alphas(-0.3125f, 3.0f);
    EXPECT_EQ(replay(), after);
    set_device_alphas(0.75f, 1.5f);
    EXPECT_EQ(replay(), before);
    EXPECT_TRUE(y_device.guards_intact());
    check_cuda(cudaGraphExecDestroy(exec), "destroy exec");
    check_cuda(cudaGraphDestroy(graph), "destroy graph");
    check_cuda(cudaStreamDestroy(stream), "destroy stream");
  }
}

// Nvfp4GemmPath::BatchInvariant (--deterministic): each token's row of a batch of m is bitwise the row of that token
// run alone, for m on both sides of the tile's switch from 4 to 8 token tiles (32) and for weights whose fixed K split
// is 1 or more; and it is still the GEMM (against the float64 reference).
TEST(Nvfp4GemmCuda, BatchInvariantPathGivesEachRowTheBitsOfItsSingleRun) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    const char* name;
    int64_t k;
    std::vector<Shard> shards;
  };
  const Shape shapes[] = {{"qkv", 2048, {{4096, 0.02f}, {512, 0.05f}, {512, 0.01f}}},
                          {"o_proj", 4096, {{2048, 0.02f}}},
                          {"odd200", 208, {{136, 0.5f}, {64, 2.0f}}}};
  cuda::Nvfp4GemmContext context;
  auto run = [&context](const HostWeight& w, const DeviceWeight& weight, const bf16_bits* x, int64_t m) {
    GuardedBuffer x_device(static_cast<size_t>(m * w.k) * sizeof(bf16_bits));
    GuardedBuffer y_device(static_cast<size_t>(m * w.n) * sizeof(bf16_bits));
    x_device.upload(x);
    y_device.fill(0xFF);
    cuda::Nvfp4GemmArgs args;
    args.x = x_device.data<bf16_bits>();
    args.m = m;
    args.weight = {weight.packed.data<uint8_t>(), weight.scales.data<uint8_t>(), w.n, w.k, Nvfp4RowOrder::Linear};
    args.alphas = w.alphas;
    args.y = y_device.data<bf16_bits>();
    args.path = cuda::Nvfp4GemmPath::BatchInvariant;
    cuda::nvfp4_gemm_w4a16(context, args);
    check_cuda(cudaDeviceSynchronize(), "batch-invariant GEMM");
    EXPECT_TRUE(y_device.guards_intact()) << "the kernel wrote outside y";
    std::vector<bf16_bits> y(static_cast<size_t>(m * w.n));
    y_device.download(y.data());
    return y;
  };
  for (const Shape& shape : shapes) {
    Random random(std::hash<std::string>{}(shape.name));
    const HostWeight w = make_weight(shape.k, shape.shards, random);
    const DeviceWeight weight(w, Nvfp4RowOrder::Linear);
    for (int64_t m : {1, 5, 33, 130}) {
      const std::vector<bf16_bits> x = random_activations(m, w.k, random);
      const std::vector<bf16_bits> y = run(w, weight, x.data(), m);
      const std::vector<int64_t> tokens = m == 1 ? std::vector<int64_t>{0} : std::vector<int64_t>{0, m / 2, m - 1};
      for (int64_t t : tokens) {
        const std::vector<bf16_bits> alone = run(w, weight, x.data() + t * w.k, 1);
        EXPECT_TRUE(std::equal(alone.begin(), alone.end(), y.begin() + t * w.n))
            << shape.name << ", m " << m << ": token " << t << " differs from its single run";
      }
      expect_rows_match_reference(w, x.data(), y.data(), tokens, std::string(shape.name) + " batch-invariant");
    }
  }
}

// Bad arguments are rejected on the host before any launch, so these run wherever the CUDA backend is built.
class Nvfp4GemmArgumentTest : public testing::Test {
 protected:
  void expect_rejected(const cuda::Nvfp4GemmArgs& args, const std::string& expected) {
    try {
      cuda::nvfp4_gemm_w4a16(context_, args);
      ADD_FAILURE() << "accepted; expected an error mentioning '" << expected << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  }
  cuda::Nvfp4GemmArgs valid_args() {
    cuda::Nvfp4GemmArgs args;
    args.x = reinterpret_cast<const bf16_bits*>(uintptr_t{0x10000});  // never dereferenced: rejected first
    args.m = 4;
    args.weight = {reinterpret_cast<const uint8_t*>(uintptr_t{0x20000}),
                   reinterpret_cast<const uint8_t*>(uintptr_t{0x30000}), 256, 128, Nvfp4RowOrder::Linear};
    args.alphas = alphas_;
    args.y = reinterpret_cast<bf16_bits*>(uintptr_t{0x40000});
    return args;
  }
  cuda::Nvfp4GemmContext context_;
  std::vector<cuda::Nvfp4AlphaRange> alphas_ = {{192, 0.5f}, {256, 0.25f}};
};

TEST_F(Nvfp4GemmArgumentTest, RejectsKNotAMultipleOf16) {
  auto args = valid_args();
  args.weight.k = 120;
  expect_rejected(args, "weight.k = 120");
}

TEST_F(Nvfp4GemmArgumentTest, RejectsAlphaRangesThatDoNotCoverTheRows) {
  auto args = valid_args();
  const std::vector<cuda::Nvfp4AlphaRange> short_ranges = {{192, 0.5f}};
  args.alphas = short_ranges;
  expect_rejected(args, "alphas cover rows [0, 192)");
  const std::vector<cuda::Nvfp4AlphaRange> decreasing = {{192, 0.5f}, {100, 0.5f}, {256, 0.5f}};
  args.alphas = decreasing;
  expect_rejected(args, "alphas[1].row_end = 100");
  const std::vector<cuda::Nvfp4AlphaRange> not_finite = {{256, NAN}};
  args.alphas = not_finite;
  expect_rejected(args, "alphas[0].alpha");
}

TEST_F(Nvfp4GemmArgumentTest, RejectsShuffledRowsNotAMultipleOf32) {
  auto args = valid_args();
  args.weight.n_rows = 48;
  const std::vector<cuda::Nvfp4AlphaRange> ranges = {{48, 1.0f}};
  args.alphas = ranges;
  args.weight.row_order = Nvfp4RowOrder::Shuffled;
  expect_rejected(args, "n_rows % 32 == 0");
}

TEST_F(Nvfp4GemmArgumentTest, RejectsMisalignedOrMissingPointers) {
  auto args = valid_args();
  args.x = reinterpret_cast<const bf16_bits*>(uintptr_t{0x10002});
  expect_rejected(args, "x must be");
  args = valid_args();
  args.weight.block_scales = nullptr;
  expect_rejected(args, "weight.block_scales");
}

TEST_F(Nvfp4GemmArgumentTest, RejectsTooManyRows) {
  auto args = valid_args();
  args.weight.n_rows = cuda::kMaxNvfp4Rows + 32;
  const std::vector<cuda::Nvfp4AlphaRange> ranges = {{args.weight.n_rows, 1.0f}};
  args.alphas = ranges;
  expect_rejected(args, "weight.n_rows = 2097184");
}

TEST_F(Nvfp4GemmArgumentTest, RejectsTooManyTokensForTheStreamingPath) {
  auto args = valid_args();
  args.m = 33;
  args.path = cuda::Nvfp4GemmPath::Streaming;
  expect_rejected(args, "m <= 32");
}

#endif  // FP4SERVE_HAVE_CUDA

}  // namespace
}  // namespace fp4serve
