// The GPU MoE layer (Qwen3-30B-A3B: E 128, top-8, H 2048, I 768, random NVFP4 experts) at several token counts,
// against (1) the floor "bytes of the distinct experts' NVFP4 weights touched / D2D copy bandwidth measured in the
// same run" and (2) a bf16 grouped baseline: the two expert GEMMs alone through cublasGemmGroupedBatchedEx on the
// same (dequantized) weights with host-known group sizes, no routing, gather, activation or combine, so it is a lower
// bound on a bf16 layer's time. Each timed iteration runs kRotations batches with different tokens (different experts),
// so the decode working set exceeds the 50 MB L2. Times are medians of event-timed repeats. Both expert-GEMM paths
// (MoeExpertGemm) are timed as well as Auto, so the table shows where moe_expert_gemm_for's threshold belongs. Prints
// a markdown table.
#include <cstdio>

#ifndef FP4SERVE_HAVE_CUDA
int main() {
  std::puts("bench_cuda_moe: built without the CUDA backend (FP4SERVE_CUDA=OFF); nothing to measure");
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
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/cuda_bench_util.h"
#include "format/bf16.h"
#include "format/layout.h"
#include "kernels/cuda/moe_layer.h"
#include "kernels/cuda/nvfp4_kernels.h"

namespace {

using namespace fp4serve;

using bench::check;
using bench::device_alloc;

constexpr int64_t E = 128, kTopK = 8, H = 2048, I = 768;
constexpr int kRotations = 8;
constexpr int kRepeats = 7;

// Median over kRepeats of the time of `iteration` (which runs kRotations forwards), per forward, in microseconds.
double median_us(cudaStream_t stream, const std::function<void()>& iteration) {
  iteration();  // warm-up
  check(cudaStreamSynchronize(stream), "warm-up");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  std::vector<double> times;
  for (int r = 0; r < kRepeats; ++r) {
    check(cudaEventRecord(start, stream), "record");
    iteration();
    check(cudaEventRecord(stop, stream), "record");
    check(cudaEventSynchronize(stop), "sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    times.push_back(ms * 1000.0 / kRotations);
  }
  check(cudaEventDestroy(start), "event");
  check(cudaEventDestroy(stop), "event");
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

struct Stack {
  int64_t rows, k;
  uint8_t* packed;
  uint8_t* scales;  // swizzled per expert
  uint16_t* bf16;   // [E, rows, k] the same weights dequantized (baseline)
  size_t packed_bytes() const { return static_cast<size_t>(rows * k / 2); }
  size_t scale_bytes() const {
    const SwizzledScaleShape s = swizzled_scale_shape(rows, k / 16);
    return static_cast<size_t>(s.padded_rows * s.padded_cols);
  }
};

Stack make_stack(int64_t rows, int64_t k, std::mt19937_64& rng, cudaStream_t stream) {
  Stack s{rows, k, nullptr, nullptr, nullptr};
  std::vector<uint64_t> packed(E * s.packed_bytes() / 8);
  for (auto& v : packed) v = rng();
  std::vector<uint8_t> scales(E * s.scale_bytes());
  for (auto& v : scales) v = static_cast<uint8_t>(0x28 + rng() % 0x20);
  s.packed = device_alloc<uint8_t>(E * s.packed_bytes());
  s.scales = device_alloc<uint8_t>(E * s.scale_bytes());
  s.bf16 = device_alloc<uint16_t>(static_cast<size_t>(E * rows * k));
  check(cudaMemcpy(s.packed, packed.data(), E * s.packed_bytes(), cudaMemcpyHostToDevice), "upload");
  check(cudaMemcpy(s.scales, scales.data(), scales.size(), cudaMemcpyHostToDevice), "upload");
  for (int64_t e = 0; e < E; ++e) {
    cuda::Nvfp4LaunchArgs args{};
    args.packed = s.packed + e * s.packed_bytes();
    args.block_scales = s.scales + e * s.scale_bytes();
    args.n = static_cast<int32_t>(rows);
    args.k = static_cast<int32_t>(k);
    args.order = Nvfp4RowOrder::Linear;
    args.stream = stream;
    cuda::launch_nvfp4_dequantize(args, s.bf16 + e * rows * k);
  }
  return s;
}

// cublasGemmGroupedBatchedEx over the active experts of one routing: GEMM1 [count, 2I] = xs . W13_e^T, GEMM2
// [count, H] = act . W2_e^T, where xs / act are contiguous per expert (sorted rows).
struct Bf16Baseline {
  std::vector<int> m1, n, k1, m2, k2, ld1, ld2, ldc1, ldc2, group_sizes;
  std::vector<float> alphas, betas;
  std::vector<cublasOperation_t> trans_a, trans_b;
  const void** a1;
  const void** b1;
  void** c1;
  const void** a2;
  const void** b2;
  void** c2;
  int groups = 0;
};

// A device copy of a host array of device pointers (cuBLAS grouped GEMMs read their operands' addresses there).
template <typename Pointer>
Pointer* device_pointers(const std::vector<Pointer>& host) {
  Pointer* device = device_alloc<Pointer>(host.size());
  check(cudaMemcpy(device, host.data(), host.size() * sizeof(Pointer), cudaMemcpyHostToDevice), "upload pointers");
  return device;
}

Bf16Baseline make_baseline(const std::vector<int32_t>& ids, const Stack& w13, const Stack& w2, uint16_t* xs,
                           uint16_t* act, uint16_t* gate_up, uint16_t* out) {
  std::vector<int> counts(E, 0);
  for (const int32_t id : ids) ++counts[id];
  Bf16Baseline b;
  std::vector<const void*> a1, b1, a2, b2;
  std::vector<void*> c1, c2;
  int64_t row = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (counts[e] == 0) continue;
    // Column-major: C^T [rows, count] = W [rows, K] (op T of its col-major [K, rows]) . X^T [K, count].
    b.m1.push_back(static_cast<int>(2 * I));
    b.m2.push_back(static_cast<int>(H));
    b.n.push_back(counts[e]);
    b.k1.push_back(static_cast<int>(H));
    b.k2.push_back(static_cast<int>(I));
    a1.push_back(w13.bf16 + e * 2 * I * H);
    b1.push_back(xs + row * H);
    c1.push_back(gate_up + row * 2 * I);
    a2.push_back(w2.bf16 + e * H * I);
    b2.push_back(act + row * I);
    c2.push_back(out + row * H);
    row += counts[e];
    ++b.groups;
  }
  b.ld1 = b.k1;
  b.ld2 = b.k2;
  b.ldc1 = b.m1;
  b.ldc2 = b.m2;
  b.group_sizes.assign(b.groups, 1);
  b.alphas.assign(b.groups, 1.0f);
  b.betas.assign(b.groups, 0.0f);
  b.trans_a.assign(b.groups, CUBLAS_OP_T);
  b.trans_b.assign(b.groups, CUBLAS_OP_N);
  b.a1 = device_pointers(a1);
  b.b1 = device_pointers(b1);
  b.c1 = device_pointers(c1);
  b.a2 = device_pointers(a2);
  b.b2 = device_pointers(b2);
  b.c2 = device_pointers(c2);
  return b;
}

void run_baseline(cublasHandle_t blas, const Bf16Baseline& b) {
  check(cublasGemmGroupedBatchedEx(blas, b.trans_a.data(), b.trans_b.data(), b.m1.data(), b.n.data(), b.k1.data(),
                                   b.alphas.data(), b.a1, CUDA_R_16BF, b.ld1.data(), b.b1, CUDA_R_16BF, b.ld1.data(),
                                   b.betas.data(), b.c1, CUDA_R_16BF, b.ldc1.data(), b.groups, b.group_sizes.data(),
                                   CUBLAS_COMPUTE_32F),
        "grouped GEMM1");
  check(cublasGemmGroupedBatchedEx(blas, b.trans_a.data(), b.trans_b.data(), b.m2.data(), b.n.data(), b.k2.data(),
                                   b.alphas.data(), b.a2, CUDA_R_16BF, b.ld2.data(), b.b2, CUDA_R_16BF, b.ld2.data(),
                                   b.betas.data(), b.c2, CUDA_R_16BF, b.ldc2.data(), b.groups, b.group_sizes.data(),
                                   CUBLAS_COMPUTE_32F),
        "grouped GEMM2");
}

}  // namespace

int main() {
  try {
    cudaStream_t stream;
    check(cudaStreamCreate(&stream), "stream");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, 0), "properties");
    const double copy_gbs = bench::copy_bandwidth_gbs(stream);
    std::mt19937_64 rng(1234);
    const Stack w13 = make_stack(2 * I, H, rng, stream), w2 = make_stack(H, I, rng, stream);
    const size_t expert_bytes = w13.packed_bytes() + w13.scale_bytes() + w2.packed_bytes() + w2.scale_bytes();
    std::vector<uint16_t> router(E * H);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto& v : router) v = float_to_bf16(0.02f * normal(rng));
    uint16_t* router_d = device_alloc<uint16_t>(router.size());
    check(cudaMemcpy(router_d, router.data(), router.size() * 2, cudaMemcpyHostToDevice), "upload");
    std::vector<float> g1(2 * E), g2(E);
    for (auto& v : g1) v = 1.0f / (3.0f * std::sqrt(static_cast<float>(H)));
    for (auto& v : g2) v = 1.0f / (1.5f * std::sqrt(static_cast<float>(I)));
    float* g1_d = device_alloc<float>(g1.size());
    float* g2_d = device_alloc<float>(g2.size());
    check(cudaMemcpy(g1_d, g1.data(), g1.size() * 4, cudaMemcpyHostToDevice), "upload");
    check(cudaMemcpy(g2_d, g2.data(), g2.size() * 4, cudaMemcpyHostToDevice), "upload");
    const cuda::MoeLayerWeights weights{.router = router_d, .w13_packed = w13.packed, .w13_scales = w13.scales,
                                        .w13_row_order = Nvfp4RowOrder::Linear, .w2_packed = w2.packed,
                                        .w2_scales = w2.scales, .w2_row_order = Nvfp4RowOrder::Linear,
                                        .g1_alphas = g1_d, .g2_alphas = g2_d};
    cublasHandle_t blas;
    check(cublasCreate(&blas), "cublasCreate");
    check(cublasSetStream(blas, stream), "cublasSetStream");
    cuda::MoeLayerContext context;

    std::printf("GPU: %s, D2D copy bandwidth %.0f GB/s (read + write); NVFP4 expert: %.2f MB\n\n", prop.name, copy_gbs,
                static_cast<double>(expert_bytes) / 1e6);
    std::printf("| tokens | distinct experts (mean of %d batches) | NVFP4 MB touched | floor us | ours us (graph) | "
                "auto path | layer kernels us (graph) | grouped GEMM us (graph) | ours us (stream) | floor / ours | "
                "bf16 grouped GEMMs us | bf16 / ours |\n",
                kRotations);
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (const int64_t m : {int64_t{1}, int64_t{16}, int64_t{64}, int64_t{256}, int64_t{4096}}) {
      const cuda::MoeLayerShape shape{.n_experts = E, .top_k = kTopK, .hidden = H, .intermediate = I,
                                      .norm_topk_prob = true, .max_tokens = m};
      const size_t workspace_bytes = cuda::moe_layer_workspace_bytes(shape);
      std::vector<void*> workspaces(kRotations);
      std::vector<uint16_t*> xs(kRotations), ys(kRotations);
      std::vector<uint16_t> x(m * H);
      for (int r = 0; r < kRotations; ++r) {
        for (auto& v : x) v = float_to_bf16(normal(rng));
        xs[r] = device_alloc<uint16_t>(x.size());
        ys[r] = device_alloc<uint16_t>(x.size());
        check(cudaMalloc(&workspaces[r], workspace_bytes), "workspace");
        check(cudaMemcpy(xs[r], x.data(), x.size() * 2, cudaMemcpyHostToDevice), "upload");
      }
      auto forward = [&](int r, cuda::MoeExpertGemm path) {
        cuda::moe_layer_forward(context, shape, weights,
                                {.x = xs[r], .m = m, .y = ys[r], .workspace = workspaces[r],
                                 .workspace_bytes = workspace_bytes, .stream = stream, .expert_gemm = path});
      };
      const double stream_us = median_us(stream, [&] {
        for (int r = 0; r < kRotations; ++r) forward(r, cuda::MoeExpertGemm::Auto);
      });
      auto graph_us = [&](cuda::MoeExpertGemm path) {
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
        for (int r = 0; r < kRotations; ++r) forward(r, path);
        check(cudaStreamEndCapture(stream, &graph), "end capture");
        check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
        const double us = median_us(stream, [&] { check(cudaGraphLaunch(exec, stream), "graph launch"); });
        check(cudaGraphExecDestroy(exec), "graph");
        check(cudaGraphDestroy(graph), "graph");
        return us;
      };
      const double layer_us = graph_us(cuda::MoeExpertGemm::LayerKernels);
      const double grouped_us = graph_us(cuda::MoeExpertGemm::GroupedGemm);
      const double graph_auto_us = graph_us(cuda::MoeExpertGemm::Auto);
      const bool auto_layer = cuda::moe_expert_gemm_for(shape, m) == cuda::MoeExpertGemm::LayerKernels;

      // Routing of each batch (from the workspace) -> distinct experts and the baseline's groups.
      double distinct = 0;
      std::vector<Bf16Baseline> baselines;
      uint16_t* sorted_x = device_alloc<uint16_t>(m * kTopK * H);
      uint16_t* act = device_alloc<uint16_t>(m * kTopK * I);
      uint16_t* gate_up = device_alloc<uint16_t>(m * kTopK * 2 * I);
      uint16_t* out = device_alloc<uint16_t>(m * kTopK * H);
      check(cudaMemset(sorted_x, 0x3C, m * kTopK * H * 2), "memset");
      check(cudaMemset(act, 0x3C, m * kTopK * I * 2), "memset");
      for (int r = 0; r < kRotations; ++r) {
        std::vector<int32_t> ids(m * kTopK);
        check(cudaMemcpy(ids.data(), cuda::moe_layer_routing(shape, workspaces[r]).topk_ids, ids.size() * 4,
                         cudaMemcpyDeviceToHost),
              "ids");
        distinct += static_cast<double>(std::set<int32_t>(ids.begin(), ids.end()).size()) / kRotations;
        baselines.push_back(make_baseline(ids, w13, w2, sorted_x, act, gate_up, out));
      }
      const double bf16_us = median_us(stream, [&] {
        for (const Bf16Baseline& b : baselines) run_baseline(blas, b);
      });
      const double touched_bytes = distinct * static_cast<double>(expert_bytes);
      const double floor_us = touched_bytes / (copy_gbs * 1e3);
      std::printf("| %lld | %.1f | %.1f | %.1f | %.1f | %s | %.1f | %.1f | %.1f | %.0f%% | %.1f | %.2fx |\n",
                  static_cast<long long>(m), distinct, touched_bytes / 1e6, floor_us, graph_auto_us,
                  auto_layer ? "layer kernels" : "grouped GEMM", layer_us, grouped_us, stream_us,
                  100.0 * floor_us / graph_auto_us, bf16_us, bf16_us / graph_auto_us);
      std::fflush(stdout);
      for (int r = 0; r < kRotations; ++r) {
        check(cudaFree(xs[r]), "free");
        check(cudaFree(ys[r]), "free");
        check(cudaFree(workspaces[r]), "free");
      }
      for (uint16_t* p : {sorted_x, act, gate_up, out}) check(cudaFree(p), "free");
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_moe: %s\n", e.what());
    return 1;
  }
}
#endif  // FP4SERVE_HAVE_CUDA
