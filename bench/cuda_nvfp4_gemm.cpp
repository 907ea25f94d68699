// NVFP4 W4A16 GEMM on the GPU: each kernel variant and the Auto choice against a cuBLAS bf16 GEMM of the same shape
// (Qwen3-30B-A3B linears, M tokens). Times are medians of CUDA-graph replays, each replay launching once per copy of
// the weights (copies rotate so that the weights come from HBM, not L2). Prints a markdown table last.
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

#include "format/bf16.h"
#include "format/layout.h"
#include "format/nvfp4.h"
#include "kernels/cuda/nvfp4_gemm.h"
#include "kernels/cuda/nvfp4_kernels.h"

namespace {

using namespace fp4serve;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}
void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(what) + ": " + cublasGetStatusString(status));
}

constexpr size_t kRotationBytes = size_t{256} << 20;  // > 5x the 50 MB L2 of an H100
constexpr int kTimedReplays = 7;

template <typename T>
T* device_alloc(size_t count) {
  void* p = nullptr;
  check(cudaMalloc(&p, count * sizeof(T)), "cudaMalloc");
  return static_cast<T*>(p);
}

// Median time of one launch: `launch(i)` for i in [0, launches) is captured once as a graph and replayed.
double median_us(cudaStream_t stream, int launches, const std::function<void(int)>& launch) {
  launch(0);  // outside the capture: first-use setup (function attributes, cuBLAS, workspaces)
  check(cudaStreamSynchronize(stream), "warm-up");
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
  for (int i = 0; i < launches; ++i) launch(i);
  check(cudaStreamEndCapture(stream, &graph), "end capture");
  check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  check(cudaGraphLaunch(exec, stream), "graph warm-up");
  std::vector<double> times;
  for (int r = 0; r < kTimedReplays; ++r) {
    check(cudaEventRecord(start, stream), "record");
    check(cudaGraphLaunch(exec, stream), "graph launch");
    check(cudaEventRecord(stop, stream), "record");
    check(cudaEventSynchronize(stop), "sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    times.push_back(ms * 1000.0 / launches);
  }
  check(cudaEventDestroy(start), "event");
  check(cudaEventDestroy(stop), "event");
  check(cudaGraphExecDestroy(exec), "graph");
  check(cudaGraphDestroy(graph), "graph");
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double copy_bandwidth_gbs(cudaStream_t stream) {
  const size_t bytes = size_t{1} << 30;
  uint8_t* a = device_alloc<uint8_t>(bytes);
  uint8_t* b = device_alloc<uint8_t>(bytes);
  check(cudaMemsetAsync(a, 1, bytes, stream), "memset");
  const double us = median_us(stream, 4, [&](int) {
    check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream), "copy");
  });
  check(cudaFree(a), "free");
  check(cudaFree(b), "free");
  return 2.0 * bytes / us / 1e3;  // bytes read + written
}

struct Layer {
  const char* name;
  int64_t n, k;
};

struct Row {
  std::string layer;
  int64_t m;
  std::vector<double> us;  // per variant, NaN where not applicable
  std::string auto_path;
  double auto_us, cublas_us, weight_gbs, tflops;
};

// The streaming kernel with the warps per CTA its rule picks, then forced to 16, 8 and 4 (how the rule was chosen).
const char* const kVariants[] = {"streaming", "w16", "w8", "w4", "deq+cublas", "auto"};
constexpr int kVariantCount = 6;
constexpr int kStreamingVariants = 4;

const char* path_label(cuda::Nvfp4GemmPath path) {
  switch (path) {
    case cuda::Nvfp4GemmPath::Streaming: return "streaming";
    case cuda::Nvfp4GemmPath::DequantCublas: return "deq+cublas";
    case cuda::Nvfp4GemmPath::Auto: break;
  }
  return "?";
}

std::vector<Row> bench_layer(const Layer& layer, cudaStream_t stream, cublasHandle_t blas,
                             cuda::Nvfp4GemmContext& context) {
  const int64_t n = layer.n, k = layer.k;
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<bf16_bits> w(n * k);
  for (auto& v : w) v = float_to_bf16(normal(rng));
  const float global_scale = nvfp4_global_scale(amax_abs(w.data(), n * k));
  std::vector<uint8_t> packed(n * k / 2), scales(n * k / 16);
  nvfp4_quantize(w.data(), n, k, global_scale, packed.data(), scales.data());
  const SwizzledScaleShape padded = swizzled_scale_shape(n, k / 16);
  std::vector<uint8_t> swizzled(padded.padded_rows * padded.padded_cols);
  swizzle_block_scales(scales.data(), {1, n, k / 16, "scales"}, swizzled.data());

  const size_t nvfp4_bytes = packed.size() + swizzled.size(), bf16_bytes = w.size() * sizeof(bf16_bits);
  const int nvfp4_copies = static_cast<int>(std::clamp<size_t>(kRotationBytes / nvfp4_bytes, 8, 256));
  const int bf16_copies = static_cast<int>(std::clamp<size_t>(kRotationBytes / bf16_bytes, 8, 256));
  uint8_t* packed_d = device_alloc<uint8_t>(packed.size() * nvfp4_copies);
  uint8_t* scales_d = device_alloc<uint8_t>(swizzled.size() * nvfp4_copies);
  bf16_bits* w_d = device_alloc<bf16_bits>(w.size() * bf16_copies);
  for (int c = 0; c < nvfp4_copies; ++c) {
    check(cudaMemcpy(packed_d + c * packed.size(), packed.data(), packed.size(), cudaMemcpyHostToDevice), "upload");
    check(cudaMemcpy(scales_d + c * swizzled.size(), swizzled.data(), swizzled.size(), cudaMemcpyHostToDevice),
          "upload");
  }
  for (int c = 0; c < bf16_copies; ++c)
    check(cudaMemcpy(w_d + c * w.size(), w.data(), bf16_bytes, cudaMemcpyHostToDevice), "upload");

  const int64_t max_m = 4096;
  std::vector<bf16_bits> x(max_m * k);
  for (auto& v : x) v = float_to_bf16(normal(rng) * 50.0f);
  bf16_bits* x_d = device_alloc<bf16_bits>(x.size());
  bf16_bits* y_d = device_alloc<bf16_bits>(max_m * n);
  check(cudaMemcpy(x_d, x.data(), x.size() * sizeof(bf16_bits), cudaMemcpyHostToDevice), "upload");
  context.reserve_dequant(n, k);

  const std::vector<cuda::Nvfp4AlphaRange> alphas = {{n, global_scale}};
  std::vector<Row> rows;
  for (int64_t m : {1, 16, 32, 64, 256, 4096}) {
    cuda::Nvfp4GemmArgs args;
    args.x = x_d;
    args.m = m;
    args.alphas = alphas;
    args.y = y_d;
    args.stream = stream;
    cuda::Nvfp4LaunchArgs launch{};
    launch.x = x_d;
    launch.m = static_cast<int32_t>(m);
    launch.n = static_cast<int32_t>(n);
    launch.k = static_cast<int32_t>(k);
    launch.order = Nvfp4RowOrder::Linear;
    launch.alphas.count = 1;
    launch.alphas.row_end[0] = static_cast<int32_t>(n);
    launch.alphas.alpha[0] = global_scale;
    launch.y = y_d;
    launch.stream = stream;
    auto with_copy = [&](int i) {
      cuda::Nvfp4LaunchArgs l = launch;
      l.packed = packed_d + (i % nvfp4_copies) * packed.size();
      l.block_scales = scales_d + (i % nvfp4_copies) * swizzled.size();
      return l;
    };
    auto public_call = [&](int i, cuda::Nvfp4GemmPath path) {
      cuda::Nvfp4GemmArgs a = args;
      a.weight = {packed_d + (i % nvfp4_copies) * packed.size(), scales_d + (i % nvfp4_copies) * swizzled.size(), n,
                  k, Nvfp4RowOrder::Linear};
      a.path = path;
      cuda::nvfp4_gemm_w4a16(context, a);
    };
    const std::function<void(int)> variants[kVariantCount] = {
        [&](int i) { cuda::launch_nvfp4_streaming(with_copy(i), cuda::nvfp4_streaming_warps_for(m, n, k)); },
        [&](int i) { cuda::launch_nvfp4_streaming(with_copy(i), 16); },
        [&](int i) { cuda::launch_nvfp4_streaming(with_copy(i), 8); },
        [&](int i) { cuda::launch_nvfp4_streaming(with_copy(i), 4); },
        [&](int i) { public_call(i, cuda::Nvfp4GemmPath::DequantCublas); },
        [&](int i) { public_call(i, cuda::Nvfp4GemmPath::Auto); },
    };
    const cuda::Nvfp4GemmPath auto_path = cuda::nvfp4_gemm_auto_path(m);
    std::string auto_label = path_label(auto_path);
    if (auto_path == cuda::Nvfp4GemmPath::Streaming)
      auto_label += " w" + std::to_string(cuda::nvfp4_streaming_warps_for(m, n, k));
    Row row{layer.name, m, {}, auto_label, 0, 0, 0, 0};
    for (int v = 0; v < kVariantCount; ++v) {
      const bool applicable = v >= kStreamingVariants || m <= cuda::kNvfp4StreamingMaxTokens;
      row.us.push_back(applicable ? median_us(stream, nvfp4_copies, variants[v]) : NAN);
    }
    row.auto_us = row.us.back();
    const float one = 1.0f, zero = 0.0f;
    row.cublas_us = median_us(stream, bf16_copies, [&](int i) {
      check(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
                         &one, w_d + (i % bf16_copies) * w.size(), CUDA_R_16BF, static_cast<int>(k), x_d, CUDA_R_16BF,
                         static_cast<int>(k), &zero, y_d, CUDA_R_16BF, static_cast<int>(n), CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx");
    });
    row.weight_gbs = nvfp4_bytes / row.auto_us / 1e3;
    row.tflops = 2.0 * m * n * k / row.auto_us / 1e6;
    rows.push_back(row);
    std::fprintf(stderr, "%s m=%ld done\n", layer.name, static_cast<long>(m));
  }
  for (void* p : {static_cast<void*>(packed_d), static_cast<void*>(scales_d), static_cast<void*>(w_d),
                  static_cast<void*>(x_d), static_cast<void*>(y_d)})
    check(cudaFree(p), "free");
  return rows;
}

void print_time(double us) {
  if (std::isnan(us))
    std::printf(" - |");
  else
    std::printf(" %.1f |", us);
}

}  // namespace

int main() {
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

    const double copy_gbs = copy_bandwidth_gbs(stream);
    const Layer layers[] = {{"qkv", 5120, 2048}, {"o_proj", 2048, 4096}, {"gate_up", 1536, 2048}, {"down", 2048, 768}};
    std::vector<Row> rows;
    for (const Layer& layer : layers)
      for (const Row& row : bench_layer(layer, stream, blas, context)) rows.push_back(row);

    std::printf("\n%s, %d SMs, L2 %d MB; device-to-device copy %.0f GB/s (read + write)\n", prop.name,
                prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_gbs);
    std::printf("Times in us per launch (median of %d graph replays, weights rotated over > 256 MB).\n", kTimedReplays);
    std::printf("GB/s: NVFP4 weight bytes (codes + scales) / auto time. Speedup: cuBLAS bf16 / auto.\n\n");
    std::printf("| layer | N | K | M |");
    for (const char* v : kVariants) std::printf(" %s |", v);
    std::printf(" auto path | weight GB/s | TFLOP/s | cuBLAS bf16 | speedup |\n|---|---|---|---|");
    for (int v = 0; v < kVariantCount; ++v) std::printf("---|");
    std::printf("---|---|---|---|---|\n");
    for (const Row& row : rows) {
      const Layer& layer = *std::find_if(std::begin(layers), std::end(layers),
                                         [&](const Layer& l) { return row.layer == l.name; });
      std::printf("| %s | %ld | %ld | %ld |", row.layer.c_str(), static_cast<long>(layer.n), static_cast<long>(layer.k),
                  static_cast<long>(row.m));
      for (double us : row.us) print_time(us);
      std::printf(" %s | %.0f | %.1f |", row.auto_path.c_str(), row.weight_gbs, row.tflops);
      print_time(row.cublas_us);
      std::printf(" %.2fx |\n", row.cublas_us / row.auto_us);
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
