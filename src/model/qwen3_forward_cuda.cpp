// Qwen3Model's GPU forward: the math of qwen3_forward.cpp on the CUDA kernels (bf16 activations, fp32 inside each
// kernel), one engine step per call on one non-default stream. Per step the host uploads one int32 block (token ids,
// positions, logit rows, page tables, sequence starts); after the step (eager or a graph replay), on the same stream,
// the sequences of ForwardBatch::device_sampling are sampled from the bf16 logits in place (CudaSampler) and only
// their tokens and logprobs come back, with the bf16 logits of the rows the host still needs (the other sequences',
// or every row for prompt logprobs); nothing else synchronizes, except the observers' host copies. Buffers grow to
// the largest step seen (rarely, with one synchronization) and are reused. Decode steps of up to
// options.cuda_graph_max_batch sequences replay CUDA graphs: one per (rows, context bucket, page-table stride),
// captured after the first eager step of that key; every pointer they hold stays valid across reloads (weights are
// rewritten in place and the GEMMs read alphas from the device), and any buffer growth drops them. Linears are NVFP4
// W4A16 (nvfp4_gemm.h) or bf16 through cuBLAS; MoE layers run the fused layer (moe_layer.h: router, top-k, grouped
// expert GEMMs, combine). The results are close to the CPU's, not bitwise: the kernels sum in other orders
// (tests/model_cuda states the tolerances). With --deterministic (QuantOptions) every kernel is chosen so that a row's
// summation order never depends on the step's other rows: batch-invariant NVFP4 GEMM tiles, cuBLAS GEMMs of a fixed
// 64 rows for bf16 linears, attention split into the same 64-key splits for prefill and decode
// (AttentionSplits::BatchInvariant), and the MoE layer's batch-invariant routing and expert GEMMs.
#include "common/error.h"
#include "model/qwen3_model.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/logits_normalizer.h"
#include "kernels/cuda/moe_layer.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/nvfp4_gemm.h"
#include "kernels/cuda/qk_norm_rope.h"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/silu_mul.h"
#include "model/qwen3_batch_layout.h"
#include "quant/linear_methods.h"
#include "quant/method_util.h"
#include "quant/moe_methods.h"
#include "quant/nvfp4_layout.h"

namespace fp4serve {

namespace {

void check_cublas(cublasStatus_t status, const char* call) {
  FP4_CHECK(status == CUBLAS_STATUS_SUCCESS, "GPU forward: {} failed: {}", call, cublasGetStatusString(status));
}

template <typename T>
T* device_ptr(const Tensor& tensor) {
  return reinterpret_cast<T*>(tensor.raw());
}

// A linear's weights as the GPU kernels take them (device pointers, host alphas).
struct GpuLinear {
  bool nvfp4 = false;
  int64_t n = 0, k = 0;
  const bf16_bits* bf16_weight = nullptr;  // [n, k]
  Nvfp4WeightView nvfp4_weight{};
  std::vector<cuda::Nvfp4AlphaRange> alphas;  // one range per shard (row ends; the values are read on the device)
  const float* device_alphas = nullptr;       // the .alpha parameter: reloads rewrite it in place
};

struct GpuLayer {
  GpuLinear qkv, o, gate_up, down;  // gate_up and down: dense MLP layers only
  bool moe = false;
  cuda::MoeLayerWeights experts{};
  const bf16_bits *input_norm = nullptr, *post_attention_norm = nullptr, *q_norm = nullptr, *k_norm = nullptr;
};

// Host memory the device copies from and to asynchronously (page-locked, so the copies do not stage).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { cudaFreeHost(data_); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  // Grows to at least `bytes` (the old contents are dropped); the caller has synchronized the stream.
  void reserve(size_t bytes) {
    if (bytes <= bytes_) return;
    cudaFreeHost(data_);
    data_ = nullptr;
    FP4_CUDA_CHECK(cudaMallocHost(&data_, bytes));
    bytes_ = bytes;
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

Tensor device_bytes(size_t bytes) { return Tensor::empty({static_cast<int64_t>(bytes)}, DType::U8, Device::CUDA); }

// One captured decode step, ready to launch.
class CapturedStep {
 public:
  explicit CapturedStep(cudaGraph_t graph) {
    const cudaError_t status = cudaGraphInstantiate(&exec_, graph, 0);
    cudaGraphDestroy(graph);
    FP4_CUDA_CHECK(status);
  }
  ~CapturedStep() {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  }
  CapturedStep(const CapturedStep&) = delete;
  CapturedStep& operator=(const CapturedStep&) = delete;
  void launch(cudaStream_t stream) const { FP4_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }
  uint64_t last_use = 0;

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// What a captured decode step bakes into its launches besides device pointers: the row count, the context bound that
// sizes the attention grid, the page-table stride (metadata offsets) and the KV cache it writes.
struct CapturedStepKey {
  int64_t rows, context, page_table_stride;
  const void* kv_cache;
  auto operator<=>(const CapturedStepKey&) const = default;
};

// Graphs kept at most; the least recently used goes first (each holds a few hundred kernel nodes).
constexpr size_t kMaxCapturedSteps = 64;

// --deterministic runs bf16 linears (cuBLAS) in chunks of this many rows, the last one padded: cuBLAS picks its
// kernel by the shape, and a fixed M gives every row the same kernel and summation order whatever the batch.
constexpr int64_t kBatchInvariantBlasRows = 64;

// Activation buffers grow geometrically, in whole chunks of kBatchInvariantBlasRows: a padded chunk reads and
// writes rows past the batch but inside the buffer.
int64_t grown(int64_t needed, int64_t current) {
  const int64_t rows = std::max({needed, 2 * current, int64_t{16}});
  return (rows + kBatchInvariantBlasRows - 1) / kBatchInvariantBlasRows * kBatchInvariantBlasRows;
}

}  // namespace

struct Qwen3Model::CudaForward {
  CudaForward() {
    // A blocking stream: it orders after the legacy stream's work, where loads and reloads copy weights (a pageable
    // copy may return before its DMA lands) and new tensors are zero-filled. Graphs are captured on a non-blocking
    // stream (a capturing blocking stream would forbid other threads' legacy-stream work) and launched on `stream`.
    FP4_CUDA_CHECK(cudaStreamCreate(&stream));
    FP4_CUDA_CHECK(cudaStreamCreateWithFlags(&capture_stream, cudaStreamNonBlocking));
    check_cublas(cublasCreate(&cublas), "cublasCreate");
    // A fixed workspace: cuBLAS may not allocate inside a graph capture.
    blas_workspace = device_bytes(kBlasWorkspaceBytes);
    check_cublas(cublasSetWorkspace(cublas, blas_workspace.raw(), kBlasWorkspaceBytes), "cublasSetWorkspace");
  }
  ~CudaForward() {
    cudaStreamSynchronize(stream);
    captured.clear();
    cublasDestroy(cublas);
    cudaStreamDestroy(capture_stream);
    cudaStreamDestroy(stream);
  }

  static constexpr size_t kBlasWorkspaceBytes = size_t{32} << 20;
  cudaStream_t stream = nullptr, capture_stream = nullptr;
  cublasHandle_t cublas = nullptr;
  Tensor blas_workspace;
  std::map<CapturedStepKey, std::unique_ptr<CapturedStep>> captured;
  uint64_t graph_clock = 0;
  bool graphs_failed = false;
  Qwen3Model::CudaGraphStats graph_stats;
  cuda::Nvfp4GemmContext gemm;
  cuda::MoeLayerContext moe;
  cuda::MoeLayerShape moe_shape{};
  std::vector<GpuLayer> layers;
  GpuLinear lm_head;
  const bf16_bits* embed_tokens = nullptr;
  const bf16_bits* final_norm = nullptr;

  // Activation buffers for up to row_capacity rows: the residual stream, a block's input, its output, the fused qkv,
  // the attention output, the dense MLP's gate|up and activation, the MoE workspace.
  int64_t row_capacity = 0;
  Tensor residual, block_input, block_output, qkv, attention, gate_up, activated, moe_workspace;
  int64_t logit_row_capacity = 0;
  Tensor selected_rows, logits;  // [logit rows, H], [logit rows, V] bf16
  Tensor normalizers;            // [logit rows] f32: each row's log-sum-exp
  PinnedBuffer host_logits;      // [logit rows, V] bf16
  PinnedBuffer host_normalizers;  // [logit rows] f32
  size_t metadata_capacity = 0;  // int32 elements
  Tensor metadata;
  PinnedBuffer host_metadata;
  std::unique_ptr<cuda::DecodeWorkspace> decode_workspace;
  std::unique_ptr<cuda::CudaSampler> sampler;  // made on the first device-sampled step, grown with its rows
  bool deterministic = false;  // QuantOptions::deterministic

  size_t workspace_bytes() const {
    size_t bytes = blas_workspace.nbytes() + gemm.workspace_bytes() + moe.workspace_bytes();
    for (const Tensor* t : {&residual, &block_input, &block_output, &qkv, &attention, &gate_up, &activated,
                            &moe_workspace, &selected_rows, &logits, &normalizers, &metadata})
      if (t->defined()) bytes += t->nbytes();
    if (decode_workspace) bytes += decode_workspace->bytes();
    if (sampler) bytes += sampler->workspace_bytes();
    return bytes;
  }

  // Records what `enqueue(capture_stream)` issues as the graph of `key`, evicting the least recently used graph
  // beyond kMaxCapturedSteps. A capture CUDA refuses turns graphs off for this model (logged): eager still works.
  template <typename Enqueue>
  void capture(const CapturedStepKey& key, Enqueue&& enqueue) {
    if (graphs_failed) return;
    FP4_CUDA_CHECK(cudaStreamBeginCapture(capture_stream, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t graph = nullptr;
    try {
      enqueue(capture_stream);
    } catch (const Error& e) {
      cudaStreamEndCapture(capture_stream, &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
      cudaGetLastError();  // capture errors are not sticky; clear the record
      graphs_failed = true;
      spdlog::warn("CUDA graph capture failed, decode runs eagerly from now on: {}", e.what());
      return;
    }
    FP4_CUDA_CHECK(cudaStreamEndCapture(capture_stream, &graph));
    if (captured.size() >= kMaxCapturedSteps) {
      auto oldest = captured.begin();
      for (auto it = captured.begin(); it != captured.end(); ++it)
        if (it->second->last_use < oldest->second->last_use) oldest = it;
      captured.erase(oldest);
    }
    auto step = std::make_unique<CapturedStep>(graph);
    step->last_use = ++graph_clock;
    captured[key] = std::move(step);
    ++graph_stats.captures;
  }

  void run_linear(const GpuLinear& linear, const bf16_bits* x, int64_t m, bf16_bits* y, cudaStream_t stream) {
    if (m == 0) return;
    if (linear.nvfp4) {
      cuda::nvfp4_gemm_w4a16(gemm, {.x = x,
                                    .m = m,
                                    .weight = linear.nvfp4_weight,
                                    .alphas = linear.alphas,
                                    .device_alphas = linear.device_alphas,
                                    .y = y,
                                    .stream = stream,
                                    .path = deterministic ? cuda::Nvfp4GemmPath::BatchInvariant
                                                          : cuda::Nvfp4GemmPath::Auto});
      return;
    }
    if (deterministic) {
      // x and y are activation buffers sized in whole chunks (grown()); rows past m are computed and ignored.
      for (int64_t row = 0; row < m; row += kBatchInvariantBlasRows)
        run_bf16_linear(linear, x + row * linear.k, kBatchInvariantBlasRows, y + row * linear.n, stream);
      return;
    }
    run_bf16_linear(linear, x, m, y, stream);
  }
  void run_bf16_linear(const GpuLinear& linear, const bf16_bits* x, int64_t m, bf16_bits* y, cudaStream_t stream) {
    // Row-major y[m, n] = x[m, k] W[n, k]^T is column-major y^T = W^T-as-stored x^T.
    check_cublas(cublasSetStream(cublas, stream), "cublasSetStream");
    const float one = 1.0f, zero = 0.0f;
    check_cublas(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(linear.n), static_cast<int>(m),
                              static_cast<int>(linear.k), &one, linear.bf16_weight, CUDA_R_16BF,
                              static_cast<int>(linear.k), x, CUDA_R_16BF, static_cast<int>(linear.k), &zero, y,
                              CUDA_R_16BF, static_cast<int>(linear.n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx (bf16 linear)");
  }
};

void Qwen3Model::CudaForwardDeleter::operator()(CudaForward* forward) const { delete forward; }

Qwen3Model::CudaGraphStats Qwen3Model::cuda_graph_stats() const {
  return cuda_ ? cuda_->graph_stats : CudaGraphStats{};
}

size_t Qwen3Model::device_workspace_bytes() const { return cuda_ ? cuda_->workspace_bytes() : 0; }

void Qwen3Model::check_cuda_support() const {
  FP4_CHECK(options_.cuda_graph_max_batch >= 0, "--cuda-graph-max-bs {} must be >= 0 (0: no CUDA graphs)",
            options_.cuda_graph_max_batch);
  FP4_CHECK(!is_nvfp4_ || options_.act_quant == ActQuant::None,
            "--device cuda runs NVFP4 layers as W4A16 (the CUDA GEMMs take bf16 activations; there is no W4A4 GEMM "
            "yet): pass --act-quant none instead of --act-quant {}",
            act_quant_name(options_.act_quant));
  for (const Layer& layer : layers_)
    FP4_CHECK(!layer.experts || dynamic_cast<const ModelOptNvfp4MoE*>(layer.experts.get()) != nullptr,
              "--device cuda: {}.mlp.experts are bf16, and the CUDA MoE layer runs NVFP4 experts only; quantize the "
              "checkpoint (fp4serve quantize) or use --device cpu",
              layer.prefix);
}

void Qwen3Model::prepare_cuda_forward() {
  if (!cuda_) cuda_.reset(new CudaForward());
  CudaForward& gpu = *cuda_;
  gpu.deterministic = options_.deterministic;
  auto bf16_param = [&](const std::string& name) { return device_ptr<const bf16_bits>(params_.get(name)); };
  auto linear_of = [&](const LinearMethod& method) {
    const LinearSpec& spec = method.spec();
    GpuLinear linear;
    linear.nvfp4 = dynamic_cast<const ModelOptNvfp4Linear*>(&method) != nullptr;
    linear.n = spec.out_features();
    linear.k = spec.in_features;
    if (!linear.nvfp4) {
      FP4_CHECK(!options_.deterministic || (linear.n % 8 == 0 && linear.k % 8 == 0),
                "--deterministic --device cuda: {} is a bf16 linear of {} x {}; its fixed-size cuBLAS GEMMs need "
                "both sizes multiples of 8 (every chunk 16-byte aligned, so cuBLAS picks the same kernel for each)",
                spec.name, linear.n, linear.k);
      linear.bf16_weight = bf16_param(spec.name + ".weight");
      return linear;
    }
    auto bytes = [&](const char* suffix) { return device_ptr<const uint8_t>(params_.get(spec.name + suffix)); };
    linear.nvfp4_weight = {.packed = bytes(".weight"),
                           .block_scales = bytes(".weight_scale_interleaved"),
                           .n_rows = linear.n,
                           .k = linear.k,
                           .row_order = nvfp4_row_order(options_.layout, false)};
    // The alphas change with every load but their storage does not: the kernels read them from the device, so
    // captured CUDA graphs stay right across reloads.
    const Tensor& alpha = params_.get(spec.name + ".alpha");
    FP4_CHECK(alpha.dtype == DType::F32 && alpha.numel() == static_cast<int64_t>(spec.shards.size()),
              "{}.alpha: expected {} f32 values (one per shard) for the GPU GEMM", spec.name, spec.shards.size());
    linear.device_alphas = device_ptr<const float>(alpha);
    int64_t row_end = 0;
    for (const auto& shard : spec.shards) {
      row_end += shard.out_features;
      linear.alphas.push_back({.row_end = row_end, .alpha = 0.0f});
    }
    FP4_CHECK(linear.alphas.size() <= cuda::kMaxNvfp4AlphaRanges, "{}: {} shards, the GPU GEMM takes at most {}",
              spec.name, linear.alphas.size(), cuda::kMaxNvfp4AlphaRanges);
    return linear;
  };

  gpu.embed_tokens = bf16_param("model.embed_tokens.weight");
  gpu.final_norm = bf16_param("model.norm.weight");
  gpu.lm_head = linear_of(lm_head_ ? *lm_head_ : *embed_tokens_);
  gpu.layers.clear();
  for (const Layer& layer : layers_) {
    GpuLayer g;
    g.qkv = linear_of(*layer.qkv_proj);
    g.o = linear_of(*layer.o_proj);
    g.input_norm = bf16_param(layer.prefix + ".input_layernorm.weight");
    g.post_attention_norm = bf16_param(layer.prefix + ".post_attention_layernorm.weight");
    g.q_norm = bf16_param(layer.prefix + ".self_attn.q_norm.weight");
    g.k_norm = bf16_param(layer.prefix + ".self_attn.k_norm.weight");
    if (layer.experts) {
      const std::string experts = layer.experts->spec().name + ".";
      auto bytes = [&](const char* name) { return device_ptr<const uint8_t>(params_.get(experts + name)); };
      auto floats = [&](const char* name) { return device_ptr<const float>(params_.get(experts + name)); };
      g.moe = true;
      g.experts = {.router = bf16_param(layer.router->spec().name + ".weight"),
                   .w13_packed = bytes("w13_weight"),
                   .w13_scales = bytes("w13_blockscale_swizzled"),
                   .w13_row_order = nvfp4_row_order(options_.layout, true),
                   .w2_packed = bytes("w2_weight"),
                   .w2_scales = bytes("w2_blockscale_swizzled"),
                   .w2_row_order = nvfp4_row_order(options_.layout, false),
                   .g1_alphas = floats("g1_alphas"),
                   .g2_alphas = floats("g2_alphas")};
    } else {
      g.gate_up = linear_of(*layer.gate_up_proj);
      g.down = linear_of(*layer.down_proj);
    }
    gpu.layers.push_back(std::move(g));
  }
  gpu.moe_shape = {.n_experts = config_.num_experts,
                   .top_k = config_.num_experts_per_tok,
                   .hidden = config_.hidden_size,
                   .intermediate = config_.moe_intermediate_size,
                   .norm_topk_prob = config_.norm_topk_prob,
                   .max_tokens = gpu.row_capacity};
}

namespace {

// The step's int32 inputs, laid out as one block so that one copy uploads them.
struct StepMetadata {
  std::vector<int32_t> values;
  size_t token_ids = 0, positions = 0, logit_rows = 0, page_tables = 0, first_position = 0, row_start = 0;
  int64_t page_table_stride = 0, max_context = 0, max_query_tokens = 0;
};

template <typename Range>
size_t append(std::vector<int32_t>& values, const Range& range) {
  const size_t at = values.size();
  for (auto v : range) values.push_back(static_cast<int32_t>(v));
  return at;
}

}  // namespace

ForwardOutput Qwen3Model::forward_cuda(const ForwardBatch& batch, const BatchLayout& rows) {
  const ForwardObserver* observer = batch.observer;
  FP4_CHECK(observer == nullptr || !observer->on_linear_input,
            "forward: observing linear inputs (calibration) needs the CPU forward; build the model with device cpu");
  CudaForward& gpu = *cuda_;
  const ModelConfig& c = config_;
  const int64_t M = rows.n_rows(), H = c.hidden_size, V = c.vocab_size, head_dim = c.head_dim;
  const int64_t n_heads = c.num_attention_heads, n_kv_heads = c.num_key_value_heads;
  const int64_t q_size = n_heads * head_dim, kv_size = n_kv_heads * head_dim, qkv_width = q_size + 2 * kv_size;
  const int64_t n_sequences = static_cast<int64_t>(rows.sequences.size());
  const int64_t n_logit_rows = batch.all_logits ? M : n_sequences;
  // The sequences sampled on the device; the others' last logit rows go to the host (logit_row_of: a sequence's row
  // in gpu.logits).
  std::vector<bool> sampled_on_device(static_cast<size_t>(n_sequences), false);
  int64_t previous = -1;
  for (const DeviceSamplingRow& row : batch.device_sampling) {
    FP4_CHECK(row.sequence > previous && row.sequence < n_sequences,
              "forward: device_sampling sequence {} must be increasing and below the batch's {} sequences",
              row.sequence, n_sequences);
    FP4_CHECK(row.params != nullptr && can_sample_on_device(*row.params),
              "forward: device_sampling sequence {} has no parameters or asks for token_ids_logprob, which the GPU "
              "sampler does not serve; sample it on the host",
              row.sequence);
    sampled_on_device[static_cast<size_t>(row.sequence)] = true;
    previous = row.sequence;
  }
  const auto logit_row_of = [&](int64_t sequence) {
    return batch.all_logits ? rows.last_rows[static_cast<size_t>(sequence)] : sequence;
  };
  const float eps = static_cast<float>(c.rms_norm_eps);
  const Shape& kv_shape = rows.kv_cache->k.shape;  // [n_layers, n_pages, page_size, n_kv_heads, head_dim]
  const int64_t page_size = kv_shape[2];

  StepMetadata meta;
  for (const PagedSequence& seq : rows.sequences) {
    meta.max_context = std::max(meta.max_context, seq.first_position + seq.n_tokens);
    meta.max_query_tokens = std::max(meta.max_query_tokens, seq.n_tokens);
  }
  for (const SequenceInput& seq : batch.sequences)
    meta.page_table_stride = std::max(meta.page_table_stride, static_cast<int64_t>(seq.page_table.size()));
  const bool all_decode = meta.max_query_tokens == 1;
  // A graph step bakes its launch shapes in: the context bound is rounded up to a power of two (the decode grid's
  // extra splits exit at once) and the page tables padded to match, so one graph serves many steps.
  const bool graph_step = all_decode && !batch.all_logits && observer == nullptr && M <= options_.cuda_graph_max_batch;
  if (graph_step) {
    int64_t bucket = cuda::kDecodeSplitTokens;
    while (bucket < meta.max_context) bucket *= 2;
    meta.max_context = bucket;
    meta.page_table_stride = std::max(meta.page_table_stride, (bucket + page_size - 1) / page_size);
  }
  meta.token_ids = append(meta.values, rows.token_ids);
  meta.positions = append(meta.values, rows.positions);
  meta.logit_rows = meta.values.size();
  if (batch.all_logits)
    for (int64_t m = 0; m < M; ++m) meta.values.push_back(static_cast<int32_t>(m));
  else
    append(meta.values, rows.last_rows);
  meta.page_tables = meta.values.size();
  for (const SequenceInput& seq : batch.sequences) {
    append(meta.values, seq.page_table);
    meta.values.resize(meta.values.size() + static_cast<size_t>(meta.page_table_stride) - seq.page_table.size(), 0);
  }
  meta.first_position = meta.values.size();
  for (const PagedSequence& seq : rows.sequences) meta.values.push_back(static_cast<int32_t>(seq.first_position));
  meta.row_start = meta.values.size();
  for (const PagedSequence& seq : rows.sequences) meta.values.push_back(static_cast<int32_t>(seq.first_row));
  meta.values.push_back(static_cast<int32_t>(M));

  // Grow what this step outgrows: wait for the previous step's work on the old buffers first. Captured graphs hold
  // the old buffers' addresses, so growth drops them.
  // A step of decodes only takes the split decode kernel. --deterministic splits every context alike in both kernels
  // (AttentionSplits::BatchInvariant), since a decode shares a step with the prefill kernel whenever another sequence
  // prefills.
  const cuda::AttentionSplits attention_splits =
      gpu.deterministic ? cuda::AttentionSplits::BatchInvariant : cuda::AttentionSplits::ByBatch;
  const int64_t decode_context = std::max<int64_t>(meta.max_context, cuda::kDecodeSplitTokens);
  const bool grow_rows = M > gpu.row_capacity, grow_logits = n_logit_rows > gpu.logit_row_capacity;
  const bool grow_metadata = meta.values.size() > gpu.metadata_capacity;
  const cuda::DecodeWorkspace* decode = gpu.decode_workspace.get();
  const bool grow_decode = all_decode && (!decode || M > decode->max_rows() ||
                                            decode_context > decode->max_context());
  if (grow_rows || grow_logits || grow_metadata || grow_decode) {
    FP4_CUDA_CHECK(cudaStreamSynchronize(gpu.stream));
    gpu.captured.clear();
  }
  if (grow_rows) {
    const int64_t cap = grown(M, gpu.row_capacity);
    auto bf16_rows = [cap](int64_t width) {
      return Tensor::empty({cap, std::max<int64_t>(width, 1)}, DType::BF16, Device::CUDA);
    };
    gpu.residual = bf16_rows(H);
    gpu.block_input = bf16_rows(H);
    gpu.block_output = bf16_rows(H);
    gpu.qkv = bf16_rows(qkv_width);
    gpu.attention = bf16_rows(q_size);
    gpu.gate_up = bf16_rows(2 * c.intermediate_size);
    gpu.activated = bf16_rows(c.intermediate_size);
    gpu.moe_shape.max_tokens = cap;
    if (c.num_experts > 0) gpu.moe_workspace = device_bytes(cuda::moe_layer_workspace_bytes(gpu.moe_shape));
    gpu.row_capacity = cap;
  }
  if (grow_logits) {
    const int64_t cap = grown(n_logit_rows, gpu.logit_row_capacity);
    gpu.selected_rows = Tensor::empty({cap, H}, DType::BF16, Device::CUDA);
    gpu.logits = Tensor::empty({cap, V}, DType::BF16, Device::CUDA);
    gpu.host_logits.reserve(static_cast<size_t>(cap * V) * sizeof(bf16_bits));
    gpu.normalizers = Tensor::empty({cap}, DType::F32, Device::CUDA);
    gpu.host_normalizers.reserve(static_cast<size_t>(cap) * sizeof(float));
    gpu.logit_row_capacity = cap;
  }
  if (grow_metadata) {
    gpu.metadata_capacity = static_cast<size_t>(grown(static_cast<int64_t>(meta.values.size()),
                                                      static_cast<int64_t>(gpu.metadata_capacity)));
    gpu.metadata = Tensor::empty({static_cast<int64_t>(gpu.metadata_capacity)}, DType::I32, Device::CUDA);
    gpu.host_metadata.reserve(gpu.metadata_capacity * sizeof(int32_t));
  }
  if (grow_decode) {
    const int64_t max_rows = std::max(M, gpu.decode_workspace ? gpu.decode_workspace->max_rows() : int64_t{0});
    int64_t context = cuda::kDecodeSplitTokens;
    while (context < decode_context) context *= 2;
    gpu.decode_workspace.reset();
    gpu.decode_workspace = std::make_unique<cuda::DecodeWorkspace>(grown(max_rows, 0), n_heads, n_kv_heads, head_dim,
                                                                   context, attention_splits);
  }

  const int64_t n_device_sampled = static_cast<int64_t>(batch.device_sampling.size());
  if (n_device_sampled > 0 && (!gpu.sampler || n_device_sampled > gpu.sampler->max_rows())) {
    const int64_t max_rows =
        std::min<int64_t>(grown(n_device_sampled, gpu.sampler ? gpu.sampler->max_rows() : 0), cuda::kMaxSamplingRows);
    gpu.sampler.reset();
    gpu.sampler = std::make_unique<cuda::CudaSampler>(max_rows, V);
  }

  // bf16 logits are exact in f32, as the CPU's bf16-rounded logits are.
  auto host_logits = [&](auto logit_row_of, size_t n_rows) {
    Tensor out = Tensor::empty({static_cast<int64_t>(n_rows), V}, DType::F32, Device::CPU);
    const bf16_bits* source = gpu.host_logits.as<bf16_bits>();
#pragma omp parallel for schedule(static) if (n_rows > 1)
    for (size_t r = 0; r < n_rows; ++r) {
      float* to = out.data<float>() + static_cast<int64_t>(r) * V;
      const bf16_bits* from = source + logit_row_of(r) * V;
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) to[v] = bf16_to_float(from[v]);
    }
    return out;
  };
  // After the step's kernels (eager or replayed) on gpu.stream: downloads the logit rows the host reads (every row
  // for prompt logprobs, else the host-sampled sequences', in contiguous runs), samples the device rows in place and
  // waits for both.
  auto finish_step = [&] {
    const cudaStream_t stream = gpu.stream;
    const bf16_bits* logits = device_ptr<const bf16_bits>(gpu.logits);
    auto download_rows = [&](int64_t first, int64_t count) {
      FP4_CUDA_CHECK(cudaMemcpyAsync(gpu.host_logits.as<bf16_bits>() + first * V, logits + first * V,
                                     static_cast<size_t>(count * V) * sizeof(bf16_bits), cudaMemcpyDeviceToHost,
                                     stream));
    };
    if (batch.all_logits) {
      download_rows(0, n_logit_rows);
    } else {
      for (int64_t first = 0; first < n_sequences;) {
        int64_t end = first;
        while (end < n_sequences && !sampled_on_device[static_cast<size_t>(end)]) ++end;
        if (end > first) download_rows(first, end - first);
        first = end + 1;
      }
    }
    FP4_CUDA_CHECK(cudaMemcpyAsync(gpu.host_normalizers.as<float>(), device_ptr<const float>(gpu.normalizers),
                                   static_cast<size_t>(n_logit_rows) * sizeof(float), cudaMemcpyDeviceToHost, stream));
    std::vector<SampledToken> device_sampled;
    if (n_device_sampled > 0) {
      std::vector<SamplingParams> params;
      std::vector<int64_t> token_indices, logit_rows;
      for (const DeviceSamplingRow& row : batch.device_sampling) {
        params.push_back(*row.params);
        token_indices.push_back(row.token_index);
        logit_rows.push_back(logit_row_of(row.sequence));
      }
      for (cuda::GpuSampledToken& sampled : gpu.sampler->sample({.logits = logits,
                                            .bf16_logits = true,
                                            .logit_rows = logit_rows,
                                            .params = params,
                                            .token_indices = token_indices,
                                            .logprobs_mode = batch.logprobs_mode,
                                            .stream = stream}))
        device_sampled.push_back(
            {.token = sampled.token,
             .logprobs = {
                 .logprob = sampled.logprob, .rank = sampled.rank, .top = std::move(sampled.top_logprobs), .ids = {}}});
    }
    FP4_CUDA_CHECK(cudaStreamSynchronize(stream));
    return device_sampled;
  };
  auto step_output = [&](std::vector<SampledToken> device_sampled) {
    ForwardOutput out;
    out.device_sampled = std::move(device_sampled);
    const float* normalizers = gpu.host_normalizers.as<float>();
    std::vector<int64_t> host_rows;  // the logit row of each host-sampled sequence
    for (int64_t s = 0; s < n_sequences; ++s)
      if (!sampled_on_device[static_cast<size_t>(s)]) host_rows.push_back(logit_row_of(s));
    out.last_logits = host_logits([&](size_t r) { return host_rows[r]; }, host_rows.size());
    for (const int64_t row : host_rows) out.last_log_normalizers.push_back(normalizers[row]);
    if (batch.all_logits) {
      out.all_logits = host_logits([](size_t r) { return static_cast<int64_t>(r); }, static_cast<size_t>(n_logit_rows));
      out.all_log_normalizers.assign(normalizers, normalizers + n_logit_rows);
    }
    return out;
  };

  // The previous step ended with a synchronization, so the pinned block is free to overwrite; a graph's first node
  // uploads it from there.
  std::memcpy(gpu.host_metadata.as<int32_t>(), meta.values.data(), meta.values.size() * sizeof(int32_t));
  const CapturedStepKey key{.rows = M,
                            .context = meta.max_context,
                            .page_table_stride = meta.page_table_stride,
                            .kv_cache = rows.kv_cache->k.raw()};
  if (graph_step) {
    const auto found = gpu.captured.find(key);
    if (found != gpu.captured.end()) {
      found->second->last_use = ++gpu.graph_clock;
      found->second->launch(gpu.stream);
      ++gpu.graph_stats.replays;
      return step_output(finish_step());
    }
  }
  int32_t* d_meta = device_ptr<int32_t>(gpu.metadata);
  const cuda::AttentionBatch attention_batch{.page_tables = d_meta + meta.page_tables,
                                             .page_table_stride = std::max<int64_t>(meta.page_table_stride, 1),
                                             .first_position = d_meta + meta.first_position,
                                             .row_start = d_meta + meta.row_start,
                                             .n_sequences = n_sequences,
                                             .n_rows = M,
                                             .max_context = meta.max_context,
                                             .max_query_tokens = meta.max_query_tokens};

  bf16_bits* x = device_ptr<bf16_bits>(gpu.residual);
  bf16_bits* h = device_ptr<bf16_bits>(gpu.block_input);
  bf16_bits* delta = device_ptr<bf16_bits>(gpu.block_output);
  bf16_bits* qkv = device_ptr<bf16_bits>(gpu.qkv);
  bf16_bits* attn = device_ptr<bf16_bits>(gpu.attention);

  // Observers read host f32 copies; each one synchronizes (they serve calibration-free taps: routing replay, tests).
  // Observer steps run eagerly on gpu.stream (they are never captured).
  const cudaStream_t stream_of_observers = gpu.stream;
  auto host_f32_rows = [&](const bf16_bits* device, int64_t n_rows, int64_t width, const bf16_bits* added = nullptr) {
    const cudaStream_t stream = stream_of_observers;
    std::vector<bf16_bits> a(static_cast<size_t>(n_rows * width)), b;
    FP4_CUDA_CHECK(cudaMemcpyAsync(a.data(), device, a.size() * sizeof(bf16_bits), cudaMemcpyDeviceToHost, stream));
    if (added != nullptr) {
      b.resize(a.size());
      FP4_CUDA_CHECK(cudaMemcpyAsync(b.data(), added, b.size() * sizeof(bf16_bits), cudaMemcpyDeviceToHost, stream));
    }
    FP4_CUDA_CHECK(cudaStreamSynchronize(stream));
    Tensor out = Tensor::empty({n_rows, width}, DType::F32, Device::CPU);
    for (size_t i = 0; i < a.size(); ++i)
      out.data<float>()[i] = added != nullptr ? round_to_bf16(bf16_to_float(a[i]) + bf16_to_float(b[i]))
                                              : bf16_to_float(a[i]);
    return out;
  };

  // The whole step on one stream, from the metadata upload to the logits and their normalizers: run eagerly, or
  // captured. finish_step follows it, outside any graph.
  auto enqueue_step = [&](cudaStream_t stream) {
    FP4_CUDA_CHECK(cudaMemcpyAsync(d_meta, gpu.host_metadata.as<int32_t>(), meta.values.size() * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, stream));
    cuda::embedding_lookup_cuda(gpu.embed_tokens, V, H, d_meta + meta.token_ids, M, x, stream);
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      const GpuLayer& layer = gpu.layers[l];
      // The residual add of the previous block is fused into this block's input norm.
      if (l == 0)
        cuda::rmsnorm_cuda(x, layer.input_norm, M, H, eps, h, stream);
      else
        cuda::fused_add_rmsnorm_cuda(x, delta, layer.input_norm, M, H, eps, h, stream);

      gpu.run_linear(layer.qkv, h, M, qkv, stream);
      cuda::qk_norm_rope_cuda({.q = qkv,
                               .q_row_stride = qkv_width,
                               .n_heads = n_heads,
                               .k = qkv + q_size,
                               .k_row_stride = qkv_width,
                               .n_kv_heads = n_kv_heads,
                               .head_dim = head_dim,
                               .q_norm_weight = layer.q_norm,
                               .k_norm_weight = layer.k_norm,
                               .positions = d_meta + meta.positions,
                               .n_tokens = M,
                               .eps = eps,
                               .theta = c.rope_theta,
                               .stream = stream});
      const int64_t layer_elements = kv_shape[1] * kv_shape[2] * kv_shape[3] * kv_shape[4];
      const PagedKvLayer cache{.k = device_ptr<bf16_bits>(rows.kv_cache->k) + l * layer_elements,
                               .v = device_ptr<bf16_bits>(rows.kv_cache->v) + l * layer_elements,
                               .n_pages = kv_shape[1],
                               .page_size = kv_shape[2],
                               .n_kv_heads = kv_shape[3],
                               .head_dim = kv_shape[4]};
      cuda::kv_cache_write_cuda(cache, attention_batch, {qkv + q_size, qkv_width}, {qkv + q_size + kv_size, qkv_width},
                                stream);
      // Any prefill chunk sends the whole batch through the causal prefill kernel (which handles one-token sequences
      // as well).
      if (all_decode)
        cuda::paged_decode_attention_cuda(cache, attention_batch, {qkv, qkv_width}, n_heads, *gpu.decode_workspace,
                                          {attn, q_size}, stream);
      else
        cuda::paged_prefill_attention_cuda(cache, attention_batch, {qkv, qkv_width}, n_heads, attention_splits,
                                           {attn, q_size}, stream);
      gpu.run_linear(layer.o, attn, M, delta, stream);
      cuda::fused_add_rmsnorm_cuda(x, delta, layer.post_attention_norm, M, H, eps, h, stream);

      if (layer.moe) {
        cuda::moe_layer_forward(gpu.moe, gpu.moe_shape, layer.experts,
                                {.x = h,
                                 .m = M,
                                 .y = delta,
                                 .workspace = gpu.moe_workspace.raw(),
                                 .workspace_bytes = gpu.moe_workspace.nbytes(),
                                 .stream = stream,
                                 .batch_invariant = gpu.deterministic});
        if (observer && observer->on_moe_routing) {
          const int64_t k = c.num_experts_per_tok;
          const cuda::MoeRouting routing = cuda::moe_layer_routing(gpu.moe_shape, gpu.moe_workspace.raw());
          const Tensor ids = Tensor::empty({M, k}, DType::I32, Device::CPU);
          const Tensor weights = Tensor::empty({M, k}, DType::F32, Device::CPU);
          FP4_CUDA_CHECK(cudaMemcpyAsync(ids.raw(), routing.topk_ids, ids.nbytes(), cudaMemcpyDeviceToHost, stream));
          FP4_CUDA_CHECK(
              cudaMemcpyAsync(weights.raw(), routing.topk_weights, weights.nbytes(), cudaMemcpyDeviceToHost, stream));
          const Tensor input = host_f32_rows(h, M, H);  // synchronizes
          observer->on_moe_routing(l, input, ids, weights);
        }
      } else {
        const int64_t I = layer.down.k;
        bf16_bits* gate_up = device_ptr<bf16_bits>(gpu.gate_up);
        bf16_bits* activated = device_ptr<bf16_bits>(gpu.activated);
        gpu.run_linear(layer.gate_up, h, M, gate_up, stream);
        cuda::silu_mul_cuda(gate_up, M, I, activated, stream);
        gpu.run_linear(layer.down, activated, M, delta, stream);
      }
      if (observer && observer->on_layer_output) observer->on_layer_output(l, host_f32_rows(x, M, H, delta));
    }

    // The final norm over every row (rows are independent), then the logit rows gathered: the embedding gather is a
    // row gather of any bf16 table.
    cuda::fused_add_rmsnorm_cuda(x, delta, gpu.final_norm, M, H, eps, h, stream);
    bf16_bits* selected = device_ptr<bf16_bits>(gpu.selected_rows);
    cuda::embedding_lookup_cuda(h, M, H, d_meta + meta.logit_rows, n_logit_rows, selected, stream);
    bf16_bits* logits = device_ptr<bf16_bits>(gpu.logits);
    gpu.run_linear(gpu.lm_head, selected, n_logit_rows, logits, stream);
    float* normalizers = device_ptr<float>(gpu.normalizers);
    cuda::logits_log_normalizer_cuda(logits, n_logit_rows, V, normalizers, stream);
  };
  enqueue_step(gpu.stream);
  std::vector<SampledToken> device_sampled = finish_step();
  if (graph_step) gpu.capture(key, enqueue_step);
  return step_output(std::move(device_sampled));
}

}  // namespace fp4serve

#else  // a CPU-only build: no model can hold CUDA parameters (Storage refuses), so these are never reached.

namespace fp4serve {

struct Qwen3Model::CudaForward {};
void Qwen3Model::CudaForwardDeleter::operator()(CudaForward* forward) const { delete forward; }
Qwen3Model::CudaGraphStats Qwen3Model::cuda_graph_stats() const { return {}; }
size_t Qwen3Model::device_workspace_bytes() const { return 0; }
[[noreturn]] static void no_cuda() {
  fail("--device cuda: this fp4serve was built without CUDA; rebuild where nvcc is available");
}
void Qwen3Model::check_cuda_support() const { no_cuda(); }
void Qwen3Model::prepare_cuda_forward() { no_cuda(); }
ForwardOutput Qwen3Model::forward_cuda(const ForwardBatch&, const BatchLayout&) { no_cuda(); }

}  // namespace fp4serve

#endif
