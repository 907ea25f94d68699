// NVFP4 W4A16 GEMM on the GPU: each path, fused tile variant and the Auto choice against a cuBLAS bf16 GEMM of the same
// shape (Qwen3-30B-A3B linears, an lm-head-like and two large shapes; M tokens), then the grouped GEMM on the
// Qwen3-30B-A3B experts against its HBM floor and a per-expert cuBLAS bf16 loop. Times are medians of CUDA-graph
// replays, each replay launching once per copy of the weights (copies rotate so that weights come from HBM, not L2).
// Prints markdown tables last. `--profile CASE` runs one case alone instead, for ncu (see profile_case).
#include <cstdio>

#ifndef FP4SERVE_HAVE_CUDA
int main() {
  std::puts("bench_cuda_nvfp4_gemm: built without the CUDA backend (FP4SERVE_CUDA=OFF); nothing to measure");
  return 0;
}
#else
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/cuda_bench_util.h"
#include "format/bf16.h"
#include "format/layout.h"
#include "format/nvfp4.h"
#include "kernels/cuda/nvfp4_gemm.h"
#include "kernels/cuda/nvfp4_grouped_gemm.h"
#include "kernels/cuda/nvfp4_kernels.h"

namespace {

using namespace fp4serve;

using bench::check;
using bench::device_alloc;

constexpr size_t kRotationBytes = size_t{256} << 20;  // > 5x the 50 MB L2 of an H100

struct Shape {
  const char* name;
  int64_t n, k;
};

// One quantized weight (random bf16, std 0.02) in `copies` device copies, and its bf16 original in bf16_copies.
struct BenchWeight {
  int64_t n, k;
  float global_scale;
  size_t packed_bytes, scale_bytes;
  int copies;
  uint8_t* packed;
  uint8_t* scales;
  std::vector<bf16_bits> bf16;
  BenchWeight(int64_t n_rows, int64_t k_cols, int min_copies, std::mt19937& rng) : n(n_rows), k(k_cols) {
    std::normal_distribution<float> normal(0.0f, 0.02f);
    bf16.resize(n * k);
    for (auto& v : bf16) v = float_to_bf16(normal(rng));
    global_scale = nvfp4_global_scale(amax_abs(bf16.data(), n * k));
    std::vector<uint8_t> codes(n * k / 2), linear(n * k / 16);
    nvfp4_quantize(bf16.data(), n, k, global_scale, codes.data(), linear.data());
    const SwizzledScaleShape padded = swizzled_scale_shape(n, k / 16);
    std::vector<uint8_t> swizzled(padded.padded_rows * padded.padded_cols);
    swizzle_block_scales(linear.data(), {1, n, k / 16, "scales"}, swizzled.data());
    packed_bytes = codes.size();
    scale_bytes = swizzled.size();
    copies = static_cast<int>(std::clamp<size_t>(kRotationBytes / (packed_bytes + scale_bytes), min_copies, 256));
    packed = device_alloc<uint8_t>(packed_bytes * copies);
    scales = device_alloc<uint8_t>(scale_bytes * copies);
    for (int c = 0; c < copies; ++c) {
      check(cudaMemcpy(packed + c * packed_bytes, codes.data(), packed_bytes, cudaMemcpyHostToDevice), "upload");
      check(cudaMemcpy(scales + c * scale_bytes, swizzled.data(), scale_bytes, cudaMemcpyHostToDevice), "upload");
    }
  }
  ~BenchWeight() {
    cudaFree(packed);
    cudaFree(scales);
  }
  size_t bytes() const { return packed_bytes + scale_bytes; }
};

// Kernel launch arguments for x [m, w.k] . w^T -> y [m, w.n] on w's first copy (linear rows, one alpha).
cuda::Nvfp4LaunchArgs dense_launch(const BenchWeight& w, int64_t m, bf16_bits* x_d, bf16_bits* y_d,
                                   cudaStream_t stream) {
  cuda::Nvfp4LaunchArgs launch{};
  launch.x = x_d;
  launch.m = static_cast<int32_t>(m);
  launch.packed = w.packed;
  launch.block_scales = w.scales;
  launch.n = static_cast<int32_t>(w.n);
  launch.k = static_cast<int32_t>(w.k);
  launch.order = Nvfp4RowOrder::Linear;
  launch.alphas.count = 1;
  launch.alphas.row_end[0] = static_cast<int32_t>(w.n);
  launch.alphas.alpha[0] = w.global_scale;
  launch.y = y_d;
  launch.stream = stream;
  return launch;
}

// Dense columns: the public Auto path; each path forced (BatchInvariant, --deterministic's, last); the fused kernel in
// other tile / split choices, with one m16 weight tile per warp (row_tiles 1, the kernel measured before) and with two
// (r2).
enum Column {
  kAuto,
  kFused,
  kFusedW8,
  kFusedW4,
  kFusedW2,
  kFusedSplit1,
  kFusedSplit2x,
  kFusedR2,
  kFusedR2Split1,
  kFusedR2Other,
  kStreaming,
  kDequant,
  kBatchInvariant,
  kColumns
};
const char* const kColumnNames[kColumns] = {"auto",     "fused",      "f w8", "f w4",       "f w2",
                                            "f split1", "f split x2", "r2",   "r2 split1",  "r2 other",
                                            "streaming", "deq+cublas", "batch-inv"};

struct DenseRow {
  std::string shape;
  int64_t n, k, m;
  double us[kColumns];
  std::string auto_label;
  double cublas_us;
  size_t nvfp4_bytes;
};

const char* path_label(cuda::Nvfp4GemmPath path) {
  switch (path) {
    case cuda::Nvfp4GemmPath::Fused: return "fused";
    case cuda::Nvfp4GemmPath::Streaming: return "streaming";
    case cuda::Nvfp4GemmPath::DequantCublas: return "deq+cublas";
    case cuda::Nvfp4GemmPath::BatchInvariant: return "batch-inv";
    case cuda::Nvfp4GemmPath::Auto: break;
  }
  return "?";
}

std::vector<DenseRow> bench_shape(const Shape& shape, cudaStream_t stream, cublasHandle_t blas,
                                  cuda::Nvfp4GemmContext& context, bf16_bits* x_d, bf16_bits* y_d) {
  const int64_t n = shape.n, k = shape.k;
  std::mt19937 rng(1234);
  BenchWeight w(n, k, 8, rng);
  const size_t bf16_bytes = w.bf16.size() * sizeof(bf16_bits);
  const int bf16_copies = static_cast<int>(std::clamp<size_t>(kRotationBytes / bf16_bytes, 4, 256));
  bf16_bits* w_d = device_alloc<bf16_bits>(w.bf16.size() * bf16_copies);
  for (int c = 0; c < bf16_copies; ++c)
    check(cudaMemcpy(w_d + c * w.bf16.size(), w.bf16.data(), bf16_bytes, cudaMemcpyHostToDevice), "upload");
  context.reserve_dequant(n, k);
  context.reserve_fused(4096, n, k);  // the BatchInvariant column's split-K workspace, before any graph capture
  float* partials = nullptr;
  int32_t* counters = nullptr;
  int64_t partial_floats = 0, counter_count = 0;

  const std::vector<cuda::Nvfp4AlphaRange> alphas = {{n, w.global_scale}};
  std::vector<DenseRow> rows;
  for (int64_t m : {1, 8, 16, 32, 64, 128, 512, 4096}) {
    const cuda::Nvfp4LaunchArgs launch = dense_launch(w, m, x_d, y_d, stream);
    auto with_copy = [&](int i) {
      cuda::Nvfp4LaunchArgs l = launch;
      l.packed = w.packed + (i % w.copies) * w.packed_bytes;
      l.block_scales = w.scales + (i % w.copies) * w.scale_bytes;
      return l;
    };
    auto public_call = [&](int i, cuda::Nvfp4GemmPath path) {
      cuda::Nvfp4GemmArgs a;
      a.x = x_d;
      a.m = m;
      a.weight = {w.packed + (i % w.copies) * w.packed_bytes, w.scales + (i % w.copies) * w.scale_bytes, n, k,
                  Nvfp4RowOrder::Linear};
      a.alphas = alphas;
      a.y = y_d;
      a.stream = stream;
      a.path = path;
      cuda::nvfp4_gemm_w4a16(context, a);
    };
    const cuda::Nvfp4FusedConfig rule = cuda::nvfp4_fused_config_for(m, n, k);
    auto with_tile = [&](int warps_n, int row_tiles) {
      cuda::Nvfp4FusedConfig config{rule.token_tiles, warps_n, 1, row_tiles};
      config.k_splits = cuda::nvfp4_fused_splits_for(m, n, k, config);
      return config;
    };
    // r2: the rule's rows per CTA as half the row warps of two m16 tiles each; r2 other: twice (rule w4) or half
    // (rule w8) those rows.
    const cuda::Nvfp4FusedConfig r2 = with_tile(rule.warps_n / 2, 2);
    const cuda::Nvfp4FusedConfig configs[] = {
        rule,
        with_tile(8, 1),
        with_tile(4, 1),
        with_tile(2, 1),
        {rule.token_tiles, rule.warps_n, 1, 1},
        {rule.token_tiles, rule.warps_n, std::min(2 * rule.k_splits, cuda::nvfp4_fused_max_splits(k, rule.warps_n)),
         1},
        r2,
        {r2.token_tiles, r2.warps_n, 1, 2},
        with_tile(rule.warps_n == 4 ? 4 : 2, 2)};
    for (const cuda::Nvfp4FusedConfig& config : configs) {
      const cuda::Nvfp4FusedWorkspaceSize size = cuda::nvfp4_fused_workspace_size(m, n, config);
      if (size.partial_floats > partial_floats) {
        if (partials != nullptr) check(cudaFree(partials), "free");
        partials = device_alloc<float>(size.partial_floats);
        partial_floats = size.partial_floats;
      }
      if (size.counters > counter_count) {
        if (counters != nullptr) check(cudaFree(counters), "free");
        counters = device_alloc<int32_t>(size.counters);
        check(cudaMemset(counters, 0, size.counters * sizeof(int32_t)), "memset");
        counter_count = size.counters;
      }
    }
    const cuda::Nvfp4GemmPath auto_path = cuda::nvfp4_gemm_auto_path(m, n, k);
    DenseRow row{shape.name, n, k, m, {}, path_label(auto_path), 0, w.bytes()};
    if (auto_path == cuda::Nvfp4GemmPath::Fused)
      row.auto_label += " t" + std::to_string(rule.token_tiles) + "w" + std::to_string(rule.warps_n) + "s" +
                        std::to_string(rule.k_splits) + "r" + std::to_string(rule.row_tiles);
    for (int c = 0; c < kColumns; ++c) {
      const bool fused_column = c >= kFused && c <= kFusedR2Other;
      // The r2 tiles only where a fused kernel can win (m <= 128; bench/RESULTS.md), to keep the run short.
      if ((fused_column && m > (c >= kFusedR2 ? 128 : 512)) ||
          (c == kStreaming && m > cuda::kNvfp4StreamingMaxTokens)) {
        row.us[c] = NAN;
        continue;
      }
      std::function<void(int)> variant;
      if (c == kAuto) variant = [&](int i) { public_call(i, cuda::Nvfp4GemmPath::Auto); };
      if (c == kDequant) variant = [&](int i) { public_call(i, cuda::Nvfp4GemmPath::DequantCublas); };
      if (c == kBatchInvariant) variant = [&](int i) { public_call(i, cuda::Nvfp4GemmPath::BatchInvariant); };
      if (c == kStreaming)
        variant = [&](int i) { cuda::launch_nvfp4_streaming(with_copy(i), cuda::nvfp4_streaming_warps_for(m, n, k)); };
      if (fused_column) {
        const cuda::Nvfp4FusedConfig config = configs[c - kFused];
        variant = [&, config](int i) { cuda::launch_nvfp4_fused(with_copy(i), config, partials, counters); };
      }
      row.us[c] = bench::median_graph_us(stream, w.copies, variant);
    }
    const float one = 1.0f, zero = 0.0f;
    row.cublas_us = bench::median_graph_us(stream, bf16_copies, [&](int i) {
      check(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
                         &one, w_d + (i % bf16_copies) * w.bf16.size(), CUDA_R_16BF, static_cast<int>(k), x_d,
                         CUDA_R_16BF, static_cast<int>(k), &zero, y_d, CUDA_R_16BF, static_cast<int>(n),
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx");
    });
    rows.push_back(row);
    std::fprintf(stderr, "%s m=%ld done\n", shape.name, static_cast<long>(m));
  }
  for (void* p : {static_cast<void*>(w_d), static_cast<void*>(partials), static_cast<void*>(counters)})
    if (p != nullptr) check(cudaFree(p), "free");
  return rows;
}

// ---- Grouped: Qwen3-30B-A3B experts (E 128, top-8, H 2048, I 768), w13 [E, 2I, H] then w2 [E, H, I] ----
// Forced grouped tiles (w13 + w2 time), besides the public rule's: the rule's token tiles with warps_n 4 and 8, and
// with warps_n 2 x row_tiles 2.
constexpr int kGroupedVariants = 3;
const char* const kGroupedVariantNames[kGroupedVariants] = {"g w4", "g w8", "g w2r2"};

struct GroupedRow {
  int64_t tokens, experts_touched;
  double w13_us, w2_us, floor_us, bf16_us;
  double variant_us[kGroupedVariants];
};

std::vector<GroupedRow> bench_grouped(cudaStream_t stream, cublasHandle_t blas, cuda::Nvfp4GemmContext& context,
                                      double copy_gbs) {
  constexpr int64_t kExperts = 128, kTopK = 8, kHidden = 2048, kInter = 768;
  constexpr int kRoutings = 6;  // weight copies, each with its own routing: touched bytes rotate past the L2
  std::mt19937 rng(99);
  // One expert's quantized weights, replicated: the kernel's time does not depend on the values.
  BenchWeight w13_one(2 * kInter, kHidden, 1, rng), w2_one(kHidden, kInter, 1, rng);
  const size_t w13_bytes = w13_one.bytes(), w2_bytes = w2_one.bytes();
  auto replicate = [&](const BenchWeight& one, uint8_t*& packed, uint8_t*& scales) {
    packed = device_alloc<uint8_t>(one.packed_bytes * kExperts * kRoutings);
    scales = device_alloc<uint8_t>(one.scale_bytes * kExperts * kRoutings);
    for (int64_t e = 0; e < kExperts * kRoutings; ++e) {
      check(cudaMemcpy(packed + e * one.packed_bytes, one.packed, one.packed_bytes, cudaMemcpyDeviceToDevice), "copy");
      check(cudaMemcpy(scales + e * one.scale_bytes, one.scales, one.scale_bytes, cudaMemcpyDeviceToDevice), "copy");
    }
  };
  uint8_t *w13_packed, *w13_scales, *w2_packed, *w2_scales;
  replicate(w13_one, w13_packed, w13_scales);
  replicate(w2_one, w2_packed, w2_scales);
  std::vector<float> alphas(kExperts * 2, w13_one.global_scale);
  float* alphas_d = device_alloc<float>(alphas.size());
  check(cudaMemcpy(alphas_d, alphas.data(), alphas.size() * sizeof(float), cudaMemcpyHostToDevice), "upload");
  // bf16 baseline weights: two copies of every expert (2 x 1.2 GB), one cuBLAS GEMM per non-empty expert.
  const int64_t w13_elems = 2 * kInter * kHidden, w2_elems = kHidden * kInter;
  bf16_bits* bf16_w = device_alloc<bf16_bits>((w13_elems + w2_elems) * kExperts * 2);
  check(cudaMemset(bf16_w, 0x3C, (w13_elems + w2_elems) * kExperts * 2 * sizeof(bf16_bits)), "memset");

  const int64_t max_tokens = 4096, max_rows = max_tokens * kTopK;
  bf16_bits* x_d = device_alloc<bf16_bits>(max_rows * kHidden);
  bf16_bits* h_d = device_alloc<bf16_bits>(max_rows * 2 * kInter);
  bf16_bits* y_d = device_alloc<bf16_bits>(max_rows * kHidden);
  check(cudaMemset(x_d, 0x3C, max_rows * kHidden * sizeof(bf16_bits)), "memset");
  check(cudaMemset(h_d, 0x3C, max_rows * 2 * kInter * sizeof(bf16_bits)), "memset");
  int32_t* offsets_d = device_alloc<int32_t>((kExperts + 1) * kRoutings);

  std::vector<GroupedRow> rows;
  for (int64_t tokens : {1, 16, 64, 256, 4096}) {
    std::vector<std::vector<int32_t>> counts(kRoutings, std::vector<int32_t>(kExperts, 0));
    int64_t touched_total = 0;
    for (int r = 0; r < kRoutings; ++r) {
      for (int64_t t = 0; t < tokens; ++t) {
        std::vector<int> ids(kExperts);
        for (int e = 0; e < kExperts; ++e) ids[e] = e;
        std::shuffle(ids.begin(), ids.end(), rng);
        for (int j = 0; j < kTopK; ++j) ++counts[r][ids[j]];
      }
      std::vector<int32_t> offsets = {0};
      for (int32_t c : counts[r]) {
        offsets.push_back(offsets.back() + c);
        touched_total += c > 0;
      }
      check(cudaMemcpy(offsets_d + r * (kExperts + 1), offsets.data(), offsets.size() * sizeof(int32_t),
                       cudaMemcpyHostToDevice),
            "upload");
    }
    // config.token_tiles == 0: the public entry point; otherwise that tile, launched directly.
    auto grouped = [&](int i, bool w13, const cuda::Nvfp4FusedConfig& config) {
      const int r = i % kRoutings;
      cuda::Nvfp4GroupedGemmArgs a;
      a.x = w13 ? x_d : h_d;
      a.max_rows = tokens * kTopK;
      a.expert_offsets = offsets_d + r * (kExperts + 1);
      a.n_experts = kExperts;
      const BenchWeight& one = w13 ? w13_one : w2_one;
      a.packed = (w13 ? w13_packed : w2_packed) + r * kExperts * one.packed_bytes;
      a.block_scales = (w13 ? w13_scales : w2_scales) + r * kExperts * one.scale_bytes;
      a.n = w13 ? 2 * kInter : kHidden;
      a.k = w13 ? kHidden : kInter;
      a.alphas = alphas_d;
      a.alphas_per_expert = w13 ? 2 : 1;
      a.y = w13 ? h_d : y_d;
      a.stream = stream;
      if (config.token_tiles == 0) {
        cuda::nvfp4_grouped_gemm_w4a16(context, a);
        return;
      }
      cuda::launch_nvfp4_grouped({a.x, static_cast<int32_t>(a.max_rows), a.expert_offsets,
                                  static_cast<int32_t>(a.n_experts), a.packed, a.block_scales,
                                  static_cast<int32_t>(a.n), static_cast<int32_t>(a.k), a.row_order, a.alphas,
                                  static_cast<int32_t>(a.alphas_per_expert), a.y, a.stream},
                                 config);
    };
    GroupedRow row{tokens, touched_total / kRoutings, 0, 0, 0, 0, {}};
    const cuda::Nvfp4FusedConfig public_rule{0, 0, 1, 1};
    row.w13_us = bench::median_graph_us(stream, kRoutings, [&](int i) { grouped(i, true, public_rule); });
    row.w2_us = bench::median_graph_us(stream, kRoutings, [&](int i) { grouped(i, false, public_rule); });
    const int token_tiles = cuda::nvfp4_grouped_config_for(tokens * kTopK, kExperts, kHidden, kHidden).token_tiles;
    const cuda::Nvfp4FusedConfig variants[kGroupedVariants] = {
        {token_tiles, 4, 1, 1}, {token_tiles, 8, 1, 1}, {token_tiles, 2, 1, 2}};
    for (int v = 0; v < kGroupedVariants; ++v)
      row.variant_us[v] = bench::median_graph_us(stream, kRoutings, [&](int i) {
        grouped(i, true, variants[v]);
        grouped(i, false, variants[v]);
      });
    row.floor_us = static_cast<double>(touched_total) / kRoutings * (w13_bytes + w2_bytes) / copy_gbs / 1e3;
    row.bf16_us = bench::median_graph_us(stream, 2, [&](int i) {
      const float one = 1.0f, zero = 0.0f;
      const std::vector<int32_t>& c = counts[i % kRoutings];
      const bf16_bits* base = bf16_w + (i % 2) * (w13_elems + w2_elems) * kExperts;
      int64_t first = 0;
      for (int64_t e = 0; e < kExperts; ++e) {
        if (c[e] == 0) continue;
        check(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, 2 * kInter, c[e], kHidden, &one, base + e * w13_elems,
                           CUDA_R_16BF, kHidden, x_d + first * kHidden, CUDA_R_16BF, kHidden, &zero,
                           h_d + first * 2 * kInter, CUDA_R_16BF, 2 * kInter, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx w13");
        check(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, kHidden, c[e], kInter, &one,
                           base + kExperts * w13_elems + e * w2_elems, CUDA_R_16BF, kInter, h_d + first * 2 * kInter,
                           CUDA_R_16BF, 2 * kInter, &zero, y_d + first * kHidden, CUDA_R_16BF, kHidden,
                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx w2");
        first += c[e];
      }
    });
    rows.push_back(row);
    std::fprintf(stderr, "grouped tokens=%ld done\n", static_cast<long>(tokens));
  }
  for (void* p : {static_cast<void*>(w13_packed), static_cast<void*>(w13_scales), static_cast<void*>(w2_packed),
                  static_cast<void*>(w2_scales), static_cast<void*>(alphas_d), static_cast<void*>(bf16_w),
                  static_cast<void*>(x_d), static_cast<void*>(h_d), static_cast<void*>(y_d),
                  static_cast<void*>(offsets_d)})
    check(cudaFree(p), "free");
  return rows;
}

// --profile: one case alone, timed by bench::median_graph_us (a launch outside the graph, a warm-up replay, then the timed
// replays; one weight copy, so L2-warm times), for a profiler to pick the third launch (ncu -k ... --launch-skip 2
// --launch-count 1). Cases: "fused N K M [TOKEN_TILES WARPS_N SPLITS ROW_TILES]" (the rule's configuration when left
// out), "streaming N K M", "grouped TOKENS" (w13, then w2; top-8 of 128 experts).
int profile_case(const std::vector<std::string>& args, cudaStream_t stream, cuda::Nvfp4GemmContext& context) {
  auto number = [&](size_t i) { return std::stol(args[i]); };
  std::mt19937 rng(7);
  if (args[0] == "grouped" && args.size() == 2) {
    constexpr int64_t kExperts = 128, kTopK = 8, kHidden = 2048, kInter = 768;
    const int64_t tokens = number(1), rows = tokens * kTopK;
    std::vector<int32_t> counts(kExperts, 0), offsets = {0};
    for (int64_t t = 0; t < tokens; ++t) {
      std::vector<int> ids(kExperts);
      for (int e = 0; e < kExperts; ++e) ids[e] = e;
      std::shuffle(ids.begin(), ids.end(), rng);
      for (int j = 0; j < kTopK; ++j) ++counts[ids[j]];
    }
    for (int32_t c : counts) offsets.push_back(offsets.back() + c);
    int32_t* offsets_d = device_alloc<int32_t>(offsets.size());
    check(cudaMemcpy(offsets_d, offsets.data(), offsets.size() * sizeof(int32_t), cudaMemcpyHostToDevice), "upload");
    BenchWeight one(2 * kInter, kHidden, 1, rng);
    uint8_t* packed = device_alloc<uint8_t>(one.packed_bytes * kExperts);
    uint8_t* scales = device_alloc<uint8_t>(one.scale_bytes * kExperts);
    for (int64_t e = 0; e < kExperts; ++e) {
      check(cudaMemcpy(packed + e * one.packed_bytes, one.packed, one.packed_bytes, cudaMemcpyDeviceToDevice), "copy");
      check(cudaMemcpy(scales + e * one.scale_bytes, one.scales, one.scale_bytes, cudaMemcpyDeviceToDevice), "copy");
    }
    std::vector<float> alphas(kExperts * 2, one.global_scale);
    float* alphas_d = device_alloc<float>(alphas.size());
    check(cudaMemcpy(alphas_d, alphas.data(), alphas.size() * sizeof(float), cudaMemcpyHostToDevice), "upload");
    bf16_bits* x_d = device_alloc<bf16_bits>(rows * kHidden);
    bf16_bits* y_d = device_alloc<bf16_bits>(rows * kHidden);
    check(cudaMemset(x_d, 0x3C, rows * kHidden * sizeof(bf16_bits)), "memset");
    // w2 reuses w13's bytes as [E, 2048, 768] weights: the time does not depend on the values.
    for (const bool w13 : {true, false}) {
      cuda::Nvfp4GroupedGemmArgs a;
      a.x = x_d;
      a.max_rows = rows;
      a.expert_offsets = offsets_d;
      a.n_experts = kExperts;
      a.packed = packed;
      a.block_scales = scales;
      a.n = w13 ? 2 * kInter : kHidden;
      a.k = w13 ? kHidden : kInter;
      a.alphas = alphas_d;
      a.alphas_per_expert = w13 ? 2 : 1;
      a.y = y_d;
      a.stream = stream;
      std::printf("grouped %s: median %.1f us\n", w13 ? "w13" : "w2",
                  bench::median_graph_us(stream, 1, [&](int) { cuda::nvfp4_grouped_gemm_w4a16(context, a); }));
    }
    for (void* p : {static_cast<void*>(offsets_d), static_cast<void*>(packed), static_cast<void*>(scales),
                    static_cast<void*>(alphas_d), static_cast<void*>(x_d), static_cast<void*>(y_d)})
      check(cudaFree(p), "free");
    return 0;
  }
  if ((args[0] == "fused" || args[0] == "streaming") && (args.size() == 4 || args.size() == 8)) {
    const int64_t n = number(1), k = number(2), m = number(3);
    BenchWeight w(n, k, 1, rng);
    bf16_bits* x_d = device_alloc<bf16_bits>(m * k);
    bf16_bits* y_d = device_alloc<bf16_bits>(m * n);
    check(cudaMemset(x_d, 0x3C, m * k * sizeof(bf16_bits)), "memset");
    const cuda::Nvfp4LaunchArgs launch = dense_launch(w, m, x_d, y_d, stream);
    if (args[0] == "streaming") {
      std::printf("streaming: median %.1f us\n", bench::median_graph_us(stream, 1, [&](int) {
                    cuda::launch_nvfp4_streaming(launch, cuda::nvfp4_streaming_warps_for(m, n, k));
                  }));
    } else {
      cuda::Nvfp4FusedConfig config = cuda::nvfp4_fused_config_for(m, n, k);
      if (args.size() == 8)
        config = {static_cast<int>(number(4)), static_cast<int>(number(5)), static_cast<int>(number(6)),
                  static_cast<int>(number(7))};
      const cuda::Nvfp4FusedWorkspaceSize size = cuda::nvfp4_fused_workspace_size(m, n, config);
      float* partials = device_alloc<float>(std::max<int64_t>(1, size.partial_floats));
      int32_t* counters = device_alloc<int32_t>(std::max<int64_t>(1, size.counters));
      check(cudaMemset(counters, 0, std::max<int64_t>(1, size.counters) * sizeof(int32_t)), "memset");
      std::printf("fused t%dw%ds%dr%d: median %.1f us\n", config.token_tiles, config.warps_n, config.k_splits,
                  config.row_tiles, bench::median_graph_us(stream, 1, [&](int) {
                    cuda::launch_nvfp4_fused(launch, config, partials, counters);
                  }));
      check(cudaFree(partials), "free");
      check(cudaFree(counters), "free");
    }
    check(cudaFree(x_d), "free");
    check(cudaFree(y_d), "free");
    return 0;
  }
  std::fprintf(stderr, "bench_cuda_nvfp4_gemm: --profile takes \"fused N K M [TOKEN_TILES WARPS_N SPLITS ROW_TILES]\", "
                       "\"streaming N K M\" or \"grouped TOKENS\"\n");
  return 2;
}

void print_time(double us) {
  if (std::isnan(us))
    std::printf(" - |");
  else
    std::printf(" %.1f |", us);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      std::puts("bench_cuda_nvfp4_gemm: no CUDA device; nothing to measure");
      return 0;
    }
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, 0), "properties");
    cudaStream_t stream;
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    cublasHandle_t blas;
    check(cublasCreate(&blas), "cublasCreate");
    void* blas_workspace = device_alloc<uint8_t>(size_t{32} << 20);
    check(cublasSetWorkspace(blas, blas_workspace, size_t{32} << 20), "cublasSetWorkspace");
    check(cublasSetStream(blas, stream), "cublasSetStream");
    cuda::Nvfp4GemmContext context;
    if (argc > 2 && std::string(argv[1]) == "--profile")
      return profile_case(std::vector<std::string>(argv + 2, argv + argc), stream, context);

    const double copy_gbs = bench::copy_bandwidth_gbs(stream);
    const int64_t max_m = 4096, max_k = 8192, max_n = 151936;
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<bf16_bits> x(max_m * max_k);
    for (auto& v : x) v = float_to_bf16(normal(rng));
    bf16_bits* x_d = device_alloc<bf16_bits>(x.size());
    bf16_bits* y_d = device_alloc<bf16_bits>(max_m * max_n);
    check(cudaMemcpy(x_d, x.data(), x.size() * sizeof(bf16_bits), cudaMemcpyHostToDevice), "upload");

    const Shape shapes[] = {{"qkv", 5120, 2048},      {"o_proj", 2048, 4096},    {"lm-head", 151936, 2048},
                            {"8192x8192", 8192, 8192}, {"28672x8192", 28672, 8192}};
    std::vector<DenseRow> rows;
    for (const Shape& shape : shapes)
      for (const DenseRow& row : bench_shape(shape, stream, blas, context, x_d, y_d)) rows.push_back(row);
    check(cudaFree(x_d), "free");
    check(cudaFree(y_d), "free");
    const std::vector<GroupedRow> grouped = bench_grouped(stream, blas, context, copy_gbs);

    std::printf("\n%s, %d SMs, L2 %d MB; device-to-device copy %.0f GB/s (read + write)\n", prop.name,
                prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_gbs);
    std::printf("Times in us per launch (median of %d graph replays, weights rotated over > 256 MB).\n",
                bench::kTimedReplays);
    std::printf("GB/s: NVFP4 weight bytes (codes + scales) / auto time; %% copy: of the copy rate above. "
                "ratio: cuBLAS bf16 / auto.\n");
    std::printf("Fused tiles tTwWsSrR: 8T tokens, W row warps of R m16 tiles (16WR rows per CTA), S K-splits. "
                "f w8/w4/w2: the rule's T with that W, R 1; split1 / split x2: the rule's tile unsplit / twice "
                "split; r2: W / 2 row warps, R 2 (the rule's rows per CTA); r2 split1: that unsplit; r2 other: R 2 "
                "with W 4 (rule W 4) or W 2 (rule W 8). Splits follow the rule's formula for each tile.\n\n");
    std::printf("| shape | M | ours (auto) | cuBLAS bf16 | ratio | GB/s | %% copy | auto path |");
    for (int c = kFused; c < kColumns; ++c) std::printf(" %s |", kColumnNames[c]);
    std::printf("\n|---|---|---|---|---|---|---|---|");
    for (int c = kFused; c < kColumns; ++c) std::printf("---|");
    std::printf("\n");
    for (const DenseRow& row : rows) {
      const double gbs = row.nvfp4_bytes / row.us[kAuto] / 1e3;
      std::printf("| %s %ldx%ld | %ld |", row.shape.c_str(), static_cast<long>(row.n), static_cast<long>(row.k),
                  static_cast<long>(row.m));
      print_time(row.us[kAuto]);
      print_time(row.cublas_us);
      std::printf(" %.2fx | %.0f | %.0f%% | %s |", row.cublas_us / row.us[kAuto], gbs, 100.0 * gbs / copy_gbs,
                  row.auto_label.c_str());
      for (int c = kFused; c < kColumns; ++c) print_time(row.us[c]);
      std::printf("\n");
    }
    std::printf("\nGrouped NVFP4 GEMM, Qwen3-30B-A3B experts (E 128, top-8, H 2048, I 768), random routing. floor: "
                "distinct experts touched x NVFP4 bytes of w13 + w2 / copy rate; bf16: one cuBLAS GEMM per busy "
                "expert and projection.\n\n");
    std::printf("Forced tiles (w13 + w2 us, same token tiles as the rule): g w4 / g w8 = 4 / 8 row warps, g w2r2 = 2 "
                "row warps of two m16 tiles.\n\n");
    std::printf("| tokens | experts touched | w13 us | w2 us | w13 + w2 us | floor us | %% of floor | bf16 cuBLAS us | "
                "speedup |");
    for (const char* name : kGroupedVariantNames) std::printf(" %s |", name);
    std::printf("\n|---|---|---|---|---|---|---|---|---|");
    for (int v = 0; v < kGroupedVariants; ++v) std::printf("---|");
    std::printf("\n");
    for (const GroupedRow& row : grouped) {
      const double total = row.w13_us + row.w2_us;
      std::printf("| %ld | %ld | %.1f | %.1f | %.1f | %.1f | %.0f%% | %.1f | %.2fx |", static_cast<long>(row.tokens),
                  static_cast<long>(row.experts_touched), row.w13_us, row.w2_us, total, row.floor_us,
                  100.0 * row.floor_us / total, row.bf16_us, row.bf16_us / total);
      for (double us : row.variant_us) print_time(us);
      std::printf("\n");
    }
    check(cublasDestroy(blas), "cublasDestroy");
    check(cudaFree(blas_workspace), "free");
    check(cudaStreamDestroy(stream), "stream");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_nvfp4_gemm: %s\n", e.what());
    return 1;
  }
  return 0;
}
#endif  // FP4SERVE_HAVE_CUDA
