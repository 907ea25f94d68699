// Paged-KV attention on the GPU (KV write, split decode, causal prefill) against the CPU kernels kv_cache_write_cpu
// and paged_attention_cpu, plus references that need no kernel: a planted key that takes the whole softmax (output ==
// its value row, bitwise) and uniform attention (output == the mean of the visible values). Every cache slot outside
// the cached prefixes is NaN and unused page-table entries are -1, so a read outside a context shows. Fresh random
// data per case; outputs poisoned (NaN) and fenced by guard bytes.
#include <gtest/gtest.h>

#include "kernels/device.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "cuda_test_support.h"
#include "format/bf16.h"
#include "gpu_ops_test_util.h"
#include "kernels/cpu/kv_cache_write.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cuda/attention.h"
#endif

namespace fp4serve::test {
namespace {

#ifndef FP4SERVE_HAVE_CUDA
TEST(AttentionCuda, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend (FP4SERVE_CUDA=OFF)"; }
#else

constexpr bf16_bits kNan = 0x7fc0;

struct Shape {
  int64_t n_heads, n_kv_heads, head_dim, page_size;
};
// Qwen3-30B-A3B (32 / 4, GQA 8) and Qwen3-4B-like (GQA 4), both head_dim 128 and page size 16.
constexpr Shape kGqa8{32, 4, 128, 16};
constexpr Shape kGqa4{16, 4, 128, 16};

struct SequenceSpec {
  int64_t cached, new_tokens;  // positions already in the cache (prefix hit), tokens of this step
};

enum class Mode { Decode, Prefill };

// A batch on the host: caches, shuffled page tables, and the new tokens' fused q|k|v projection rows.
struct HostBatch {
  Shape shape{};
  int64_t n_pages = 0, table_stride = 0, n_rows = 0, max_context = 0, max_query_tokens = 0;
  std::vector<bf16_bits> k_cache, v_cache;  // [n_pages, page_size, n_kv_heads, head_dim]
  std::vector<int32_t> tables;              // [n_sequences, table_stride], -1 where unused
  std::vector<int32_t> first_position, row_start;
  std::vector<bf16_bits> qkv;  // [n_rows, qkv_stride()]

  int64_t n_sequences() const { return static_cast<int64_t>(first_position.size()); }
  int64_t qkv_stride() const { return (shape.n_heads + 2 * shape.n_kv_heads) * shape.head_dim; }
  int64_t k_column() const { return shape.n_heads * shape.head_dim; }
  int64_t v_column() const { return (shape.n_heads + shape.n_kv_heads) * shape.head_dim; }
  PagedKvLayer layer(bf16_bits* k, bf16_bits* v) const {
    return {k, v, n_pages, shape.page_size, shape.n_kv_heads, shape.head_dim};
  }
  // Element of (sequence, position, kv head, dim) of K or V: the cache for the prefix, the qkv rows after it.
  bf16_bits& element(bool value, int64_t s, int64_t position, int64_t kv_head, int64_t d) {
    if (position < first_position[s]) {
      const int64_t offset = layer(nullptr, nullptr).offset(&tables[s * table_stride], position, kv_head);
      return (value ? v_cache : k_cache)[offset + d];
    }
    const int64_t row = row_start[s] + position - first_position[s];
    return qkv[row * qkv_stride() + (value ? v_column() : k_column()) + kv_head * shape.head_dim + d];
  }
};

HostBatch make_batch(const Shape& shape, const std::vector<SequenceSpec>& specs, Random& random) {
  HostBatch b;
  b.shape = shape;
  for (const SequenceSpec& spec : specs) {
    const int64_t context = spec.cached + spec.new_tokens, pages = (context + shape.page_size - 1) / shape.page_size;
    b.max_context = std::max(b.max_context, context);
    b.max_query_tokens = std::max(b.max_query_tokens, spec.new_tokens);
    b.table_stride = std::max(b.table_stride, pages + 1);  // one spare entry per table, left at -1
    b.n_pages += pages;
  }
  b.n_pages += 3;  // pages no sequence owns
  std::vector<int32_t> page_ids(static_cast<size_t>(b.n_pages));
  std::iota(page_ids.begin(), page_ids.end(), 0);
  for (int64_t i = b.n_pages - 1; i > 0; --i) std::swap(page_ids[i], page_ids[below(random, i + 1)]);
  const int64_t row_elements = shape.n_kv_heads * shape.head_dim;
  b.k_cache.assign(static_cast<size_t>(b.n_pages * shape.page_size * row_elements), kNan);
  b.v_cache = b.k_cache;
  b.tables.assign(static_cast<size_t>(static_cast<int64_t>(specs.size()) * b.table_stride), -1);
  size_t next_page = 0;
  b.row_start.push_back(0);
  for (size_t s = 0; s < specs.size(); ++s) {
    const int64_t context = specs[s].cached + specs[s].new_tokens;
    for (int64_t p = 0; p * shape.page_size < context; ++p) b.tables[s * b.table_stride + p] = page_ids[next_page++];
    b.first_position.push_back(static_cast<int32_t>(specs[s].cached));
    b.row_start.push_back(static_cast<int32_t>(b.row_start.back() + specs[s].new_tokens));
  }
  b.n_rows = b.row_start.back();
  for (int64_t s = 0; s < b.n_sequences(); ++s)
    for (int64_t position = 0; position < b.first_position[s]; ++position)
      for (int64_t h = 0; h < shape.n_kv_heads; ++h)
        for (int64_t d = 0; d < shape.head_dim; ++d) {
          b.element(false, s, position, h, d) = float_to_bf16(random.normal());
          b.element(true, s, position, h, d) = float_to_bf16(random.normal());
        }
  b.qkv.resize(static_cast<size_t>(b.n_rows * b.qkv_stride()));
  for (auto& x : b.qkv) x = float_to_bf16(2.0f * random.normal());  // q scaled up: a less uniform softmax
  return b;
}

struct Result {
  std::vector<bf16_bits> out;  // [n_rows, n_heads, head_dim]
  std::vector<bf16_bits> k_cache, v_cache;
};

// KV write then attention on the GPU; `max_context` is the launch bound (>= the batch's own).
Result run_gpu(const HostBatch& b, Mode mode, int64_t max_context,
               cuda::AttentionSplits splits = cuda::AttentionSplits::ByBatch) {
  const Shape& shape = b.shape;
  DeviceBytes k(b.k_cache.size() * 2), v(b.v_cache.size() * 2), tables(b.tables.size() * 4),
      first_position(b.first_position.size() * 4), row_start(b.row_start.size() * 4),
      qkv(std::max<size_t>(b.qkv.size(), 1) * 2),
      out(static_cast<size_t>(std::max<int64_t>(b.n_rows, 1) * shape.n_heads * shape.head_dim * 2));
  k.upload(b.k_cache);
  v.upload(b.v_cache);
  tables.upload(b.tables);
  first_position.upload(b.first_position);
  row_start.upload(b.row_start);
  if (!b.qkv.empty()) qkv.upload(b.qkv);
  out.fill(0xff);
  const PagedKvLayer cache = b.layer(k.data<bf16_bits>(), v.data<bf16_bits>());
  const cuda::AttentionBatch batch{.page_tables = tables.data<int32_t>(),
                                   .page_table_stride = b.table_stride,
                                   .first_position = first_position.data<int32_t>(),
                                   .row_start = row_start.data<int32_t>(),
                                   .n_sequences = b.n_sequences(),
                                   .n_rows = b.n_rows,
                                   .max_context = max_context,
                                   .max_query_tokens = b.max_query_tokens};
  bf16_bits* rows = qkv.data<bf16_bits>();
  const int64_t stride = b.qkv_stride();
  cuda::kv_cache_write_cuda(cache, batch, {rows + b.k_column(), stride}, {rows + b.v_column(), stride}, nullptr);
  const cuda::HeadsView q{rows, stride}, o{out.data<bf16_bits>(), shape.n_heads * shape.head_dim};
  if (mode == Mode::Decode) {
    cuda::DecodeWorkspace workspace(b.n_rows, shape.n_heads, shape.n_kv_heads, shape.head_dim, max_context, splits);
    cuda::paged_decode_attention_cuda(cache, batch, q, shape.n_heads, workspace, o, nullptr);
    check_cuda(cudaDeviceSynchronize(), "decode attention");
  } else {
    cuda::paged_prefill_attention_cuda(cache, batch, q, shape.n_heads, splits, o, nullptr);
    check_cuda(cudaDeviceSynchronize(), "prefill attention");
  }
  for (const DeviceBytes* buffer : {&k, &v, &qkv, &out}) EXPECT_TRUE(buffer->guards_intact());
  Result result{out.download<bf16_bits>(), k.download<bf16_bits>(), v.download<bf16_bits>()};
  result.out.resize(static_cast<size_t>(b.n_rows * shape.n_heads * shape.head_dim));
  return result;
}

struct CpuResult {
  std::vector<float> out;
  std::vector<bf16_bits> k_cache, v_cache;
};

CpuResult run_cpu(const HostBatch& b) {
  const Shape& shape = b.shape;
  CpuResult r{std::vector<float>(static_cast<size_t>(b.n_rows * shape.n_heads * shape.head_dim)), b.k_cache, b.v_cache};
  const PagedKvLayer cache = b.layer(r.k_cache.data(), r.v_cache.data());
  std::vector<PagedSequence> sequences;
  for (int64_t s = 0; s < b.n_sequences(); ++s)
    sequences.push_back(
        {&b.tables[s * b.table_stride], b.first_position[s], b.row_start[s + 1] - b.row_start[s], b.row_start[s]});
  const int64_t q_size = shape.n_heads * shape.head_dim, kv_size = shape.n_kv_heads * shape.head_dim;
  std::vector<float> q(static_cast<size_t>(b.n_rows * q_size)), k(static_cast<size_t>(b.n_rows * kv_size)), v(k);
  for (int64_t row = 0; row < b.n_rows; ++row) {
    const bf16_bits* source = &b.qkv[row * b.qkv_stride()];
    for (int64_t i = 0; i < q_size; ++i) q[row * q_size + i] = bf16_to_float(source[i]);
    for (int64_t i = 0; i < kv_size; ++i) {
      k[row * kv_size + i] = bf16_to_float(source[b.k_column() + i]);
      v[row * kv_size + i] = bf16_to_float(source[b.v_column() + i]);
    }
  }
  kv_cache_write_cpu(cache, sequences, k.data(), v.data());
  paged_attention_cpu(cache, sequences, q.data(), shape.n_heads, r.out.data());
  return r;
}

void expect_matches_cpu(const HostBatch& b, Mode mode, const std::string& what,
                        cuda::AttentionSplits splits = cuda::AttentionSplits::ByBatch) {
  const Result gpu = run_gpu(b, mode, b.max_context, splits);
  const CpuResult cpu = run_cpu(b);
  EXPECT_TRUE(gpu.k_cache == cpu.k_cache) << what << ": K cache differs from kv_cache_write_cpu";
  EXPECT_TRUE(gpu.v_cache == cpu.v_cache) << what << ": V cache differs from kv_cache_write_cpu";
  const int64_t different = expect_bf16_near(gpu.out, cpu.out, 0x1p-7, 1e-5, what);
  // Rounding boundaries are rare: a systematic error would move far more elements.
  EXPECT_LE(different, static_cast<int64_t>(gpu.out.size()) / 100 + 2) << what;
}

std::vector<SequenceSpec> decode_specs(const std::vector<int64_t>& contexts) {
  std::vector<SequenceSpec> specs;
  for (int64_t context : contexts) specs.push_back({context - 1, 1});
  return specs;
}

TEST(AttentionCuda, DecodeMatchesCpuOnMixedContexts) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(11);
  // Page and split boundaries (16, 256), a context over 1000 and one of many splits.
  const std::vector<int64_t> contexts = {1, 15, 16, 17, 255, 256, 257, 1000, 1500, 4100};
  for (const Shape& shape : {kGqa8, kGqa4}) {
    const HostBatch b = make_batch(shape, decode_specs(contexts), random);
    expect_matches_cpu(b, Mode::Decode, "decode GQA " + std::to_string(shape.n_heads / shape.n_kv_heads));
  }
}

// Small batches split contexts finer (decode_split_tokens): every split size against the CPU.
TEST(AttentionCuda, DecodeMatchesCpuAtEverySplitSize) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(17);
  for (int64_t n_sequences : {16, 32, 64}) {
    std::vector<int64_t> contexts;
    for (int64_t i = 0; i < n_sequences; ++i) contexts.push_back(1 + (i * 97) % 700);
    const int64_t split = cuda::decode_split_tokens(n_sequences, kGqa8.n_kv_heads);
    expect_matches_cpu(make_batch(kGqa8, decode_specs(contexts), random), Mode::Decode,
                       "decode of " + std::to_string(n_sequences) + " sequences in " + std::to_string(split) +
                           "-key splits");
  }
}

TEST(AttentionCuda, DecodeSplitsFinerForSmallBatches) {
  // About one split per (sequence, KV head): 32-key splits up to 63 such pairs, kDecodeSplitTokens from 256.
  EXPECT_EQ(cuda::decode_split_tokens(1, 4), 32);
  EXPECT_EQ(cuda::decode_split_tokens(15, 4), 32);
  EXPECT_EQ(cuda::decode_split_tokens(16, 4), 64);
  EXPECT_EQ(cuda::decode_split_tokens(32, 4), 128);
  EXPECT_EQ(cuda::decode_split_tokens(64, 4), cuda::kDecodeSplitTokens);
  EXPECT_EQ(cuda::decode_split_tokens(4096, 4), cuda::kDecodeSplitTokens);
  EXPECT_EQ(cuda::decode_split_tokens(63, 1), 32);
  EXPECT_EQ(cuda::decode_split_tokens(64, 1), 64);
}

TEST(AttentionCuda, PrefillMatchesCpuWithPrefixHitsAndMixedLengths) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(12);
  const std::vector<SequenceSpec> specs = {{0, 1}, {0, 15}, {0, 17}, {16, 16}, {5, 40}, {20, 0}, {1000, 3}, {0, 130}};
  for (const Shape& shape : {kGqa8, kGqa4}) {
    const HostBatch b = make_batch(shape, specs, random);
    expect_matches_cpu(b, Mode::Prefill, "prefill GQA " + std::to_string(shape.n_heads / shape.n_kv_heads));
  }
}

TEST(AttentionCuda, OtherHeadDimsMatchCpu) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(13);
  for (const Shape& shape : {Shape{8, 8, 64, 16}, Shape{16, 2, 256, 32}}) {
    const std::string dims = "head_dim " + std::to_string(shape.head_dim);
    expect_matches_cpu(make_batch(shape, decode_specs({1, 33, 700}), random), Mode::Decode, "decode " + dims);
    expect_matches_cpu(make_batch(shape, {{3, 20}, {0, 50}}, random), Mode::Prefill, "prefill " + dims);
  }
}

// q = 16 e0 for every head; every key has 0 in dim 0 except `planted` (256 there): the planted score exceeds all
// others by > 300, so the softmax is exactly one-hot where the planted key is visible and uniform where it is not.
void plant(HostBatch& b, int64_t s, int64_t planted) {
  const Shape& shape = b.shape;
  for (int64_t row = b.row_start[s]; row < b.row_start[s + 1]; ++row)
    for (int64_t h = 0; h < shape.n_heads; ++h)
      for (int64_t d = 0; d < shape.head_dim; ++d)
        b.qkv[row * b.qkv_stride() + h * shape.head_dim + d] = float_to_bf16(d == 0 ? 16.0f : 0.0f);
  const int64_t context = b.first_position[s] + b.row_start[s + 1] - b.row_start[s];
  for (int64_t position = 0; position < context; ++position)
    for (int64_t h = 0; h < shape.n_kv_heads; ++h)
      b.element(false, s, position, h, 0) = float_to_bf16(position == planted ? 256.0f : 0.0f);
}

TEST(AttentionCuda, DecodeReadsExactlyItsContext) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(14);
  const std::vector<int64_t> contexts = {1, 16, 17, 300, 1000, 2049};
  HostBatch b = make_batch(kGqa8, decode_specs(contexts), random);
  // The planted key at the first, a page-boundary, a split-boundary and the last (just written) position.
  const std::vector<int64_t> planted = {0, 15, 16, 256, 999, 2048};
  for (int64_t s = 0; s < b.n_sequences(); ++s) plant(b, s, planted[s]);
  HostBatch expected = b;  // read the value rows before the GPU writes anything
  const Result gpu = run_gpu(b, Mode::Decode, b.max_context);
  const int64_t group = kGqa8.n_heads / kGqa8.n_kv_heads, d_size = kGqa8.head_dim;
  for (int64_t s = 0; s < b.n_sequences(); ++s)
    for (int64_t h = 0; h < kGqa8.n_heads; ++h)
      for (int64_t d = 0; d < d_size; ++d)
        ASSERT_EQ(gpu.out[(s * kGqa8.n_heads + h) * d_size + d], expected.element(true, s, planted[s], h / group, d))
            << "context " << contexts[s] << ", planted key at " << planted[s] << ", head " << h << ", dim " << d;
}

TEST(AttentionCuda, PrefillIsCausal) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(15);
  // 40 new tokens after a 21-token prefix hit; the key at position 40 (a new token) is planted.
  HostBatch b = make_batch(kGqa4, {{21, 40}}, random);
  const int64_t planted = 40, group = kGqa4.n_heads / kGqa4.n_kv_heads, d_size = kGqa4.head_dim;
  plant(b, 0, planted);
  HostBatch expected = b;
  const Result gpu = run_gpu(b, Mode::Prefill, b.max_context);
  std::vector<bf16_bits> got;
  std::vector<float> reference;
  for (int64_t row = 0; row < b.n_rows; ++row) {
    const int64_t position = 21 + row;
    for (int64_t h = 0; h < kGqa4.n_heads; ++h)
      for (int64_t d = 0; d < d_size; ++d) {
        got.push_back(gpu.out[(row * kGqa4.n_heads + h) * d_size + d]);
        if (position >= planted) {
          reference.push_back(bf16_to_float(expected.element(true, 0, planted, h / group, d)));
          continue;
        }
        double sum = 0.0;  // planted key not visible yet: uniform weights over positions [0, position]
        for (int64_t j = 0; j <= position; ++j) sum += bf16_to_float(expected.element(true, 0, j, h / group, d));
        reference.push_back(static_cast<float>(sum / static_cast<double>(position + 1)));
      }
  }
  expect_bf16_near(got, reference, 0x1p-7, 1e-5, "causal prefill vs planted / uniform reference");
}

// The split size depends on the batch size only (3 sequences and 1 both split in 32 keys here), never on the launch
// bound: a row's bits are those of its sequence under that split.
TEST(AttentionCuda, DecodeRowDependsOnlyOnItsSequenceAndTheSplitSize) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(16);
  const HostBatch batch = make_batch(kGqa8, decode_specs({7, 1300, 300}), random);
  ASSERT_EQ(cuda::decode_split_tokens(3, kGqa8.n_kv_heads), cuda::decode_split_tokens(1, kGqa8.n_kv_heads));
  HostBatch alone = batch;  // sequence 1 by itself (same pages and cache contents)
  alone.tables.assign(batch.tables.begin() + batch.table_stride, batch.tables.begin() + 2 * batch.table_stride);
  alone.first_position = {batch.first_position[1]};
  alone.row_start = {0, 1};
  alone.n_rows = 1;
  alone.qkv.assign(batch.qkv.begin() + batch.qkv_stride(), batch.qkv.begin() + 2 * batch.qkv_stride());
  const Result in_batch = run_gpu(batch, Mode::Decode, batch.max_context);
  const int64_t row_size = kGqa8.n_heads * kGqa8.head_dim;
  const std::vector<bf16_bits> expected(in_batch.out.begin() + row_size, in_batch.out.begin() + 2 * row_size);
  // Alone, and under a larger launch bound (another grid): the same bits.
  EXPECT_TRUE(run_gpu(alone, Mode::Decode, 1300).out == expected);
  // A launch bound of 9000 positions needs page tables that could cover it: pad with unused (-1) entries.
  const int64_t wide_stride = (9000 + alone.shape.page_size - 1) / alone.shape.page_size;
  alone.tables.resize(static_cast<size_t>(wide_stride), -1);
  alone.table_stride = wide_stride;
  EXPECT_TRUE(run_gpu(alone, Mode::Decode, 9000).out == expected);
}

// Sequence s of `to` takes the keys, values and queries of sequence 0 of `from`, which prefills it whole (row =
// position): its cached prefix and its new rows.
void take_sequence(HostBatch& to, int64_t s, HostBatch& from) {
  for (int64_t position = 0; position < to.first_position[s]; ++position)
    for (int64_t h = 0; h < to.shape.n_kv_heads; ++h)
      for (int64_t d = 0; d < to.shape.head_dim; ++d)
        for (bool value : {false, true}) to.element(value, s, position, h, d) = from.element(value, 0, position, h, d);
  for (int64_t row = to.row_start[s]; row < to.row_start[s + 1]; ++row) {
    const int64_t position = to.first_position[s] + row - to.row_start[s];
    std::copy_n(&from.qkv[position * from.qkv_stride()], to.qkv_stride(), &to.qkv[row * to.qkv_stride()]);
  }
}

// --deterministic's guarantee at the kernel level: under AttentionSplits::BatchInvariant a position's output is
// bitwise the same prefilled whole, prefilled after a prefix hit beside other sequences, or decoded alone or in
// batches of any size (whose by-batch splits would differ).
TEST(AttentionCuda, BatchInvariantSplitsGivePrefillAndDecodeTheSameBits) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(18);
  constexpr auto kInvariant = cuda::AttentionSplits::BatchInvariant;
  constexpr int64_t kLength = 300;  // over four 64-key splits, not a multiple of one
  HostBatch whole = make_batch(kGqa8, {{0, kLength}}, random);
  const Result prefilled = run_gpu(whole, Mode::Prefill, whole.max_context, kInvariant);
  const int64_t row_size = kGqa8.n_heads * kGqa8.head_dim;
  auto expect_rows = [&](const Result& got, const HostBatch& b, int64_t s, const std::string& what) {
    for (int64_t row = b.row_start[s]; row < b.row_start[s + 1]; ++row) {
      const int64_t position = b.first_position[s] + row - b.row_start[s];
      ASSERT_TRUE(std::equal(got.out.begin() + row * row_size, got.out.begin() + (row + 1) * row_size,
                             prefilled.out.begin() + position * row_size))
          << what << ": position " << position << " differs from the whole prefill";
    }
  };
  // A prefix hit of 100 tokens, the sequence second among prefills of other lengths.
  HostBatch chunk = make_batch(kGqa8, {{0, 70}, {100, kLength - 100}, {33, 5}}, random);
  take_sequence(chunk, 1, whole);
  expect_rows(run_gpu(chunk, Mode::Prefill, chunk.max_context, kInvariant), chunk, 1, "prefill after a prefix hit");
  for (int64_t position : std::vector<int64_t>{0, 1, 63, 64, 65, 127, 128, 200, kLength - 1}) {
    for (int64_t others : {int64_t{0}, int64_t{4}, int64_t{40}}) {
      std::vector<int64_t> contexts = {position + 1};
      for (int64_t i = 0; i < others; ++i) contexts.push_back(1 + below(random, 900));
      std::swap(contexts[0], contexts[static_cast<size_t>(others / 2)]);  // the sequence in the middle of its batch
      const int64_t s = others / 2;
      HostBatch decode = make_batch(kGqa8, decode_specs(contexts), random);
      take_sequence(decode, s, whole);
      expect_rows(run_gpu(decode, Mode::Decode, decode.max_context, kInvariant), decode, s,
                  "decode beside " + std::to_string(others) + " sequences");
    }
  }
}

TEST(AttentionCuda, BatchInvariantSplitsMatchCpu) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(19);
  constexpr auto kInvariant = cuda::AttentionSplits::BatchInvariant;
  expect_matches_cpu(make_batch(kGqa8, decode_specs({1, 64, 65, 1000, 4100}), random), Mode::Decode,
                     "batch-invariant decode", kInvariant);
  expect_matches_cpu(make_batch(kGqa8, {{0, 130}, {64, 64}, {1000, 3}}, random), Mode::Prefill,
                     "batch-invariant prefill", kInvariant);
}

TEST(AttentionCuda, RejectsBadArgumentsNamingTheField) {
  FP4_SKIP_WITHOUT_GPU();
  DeviceBytes k(4096 * 2), v(4096 * 2), ints(64 * 4), rows(4096 * 2), out(4096 * 2);
  PagedKvLayer cache{k.data<bf16_bits>(), v.data<bf16_bits>(), 2, 16, 1, 128};
  cuda::AttentionBatch batch{ints.data<int32_t>(), 2, ints.data<int32_t>(), ints.data<int32_t>(), 1, 1, 32, 1};
  const cuda::HeadsView q{rows.data<bf16_bits>(), 4 * 128}, o{out.data<bf16_bits>(), 4 * 128};
  cuda::DecodeWorkspace workspace(1, 4, 1, 128, 32, cuda::AttentionSplits::ByBatch);
  auto decode = [&] { cuda::paged_decode_attention_cuda(cache, batch, q, 4, workspace, o, nullptr); };
  auto prefill = [&] {
    cuda::paged_prefill_attention_cuda(cache, batch, q, 4, cuda::AttentionSplits::ByBatch, o, nullptr);
  };

  batch.max_context = 300;
  expect_error_naming(decode, "page_table_stride = 2");
  batch.page_table_stride = 20;
  expect_error_naming(decode, "exceeds the workspace's max_context");
  batch.max_context = 32;
  batch.n_rows = 2;
  expect_error_naming(decode, "batch.n_rows = 2");
  batch.n_rows = 1;
  batch.max_query_tokens = 0;
  expect_error_naming(prefill, "batch.max_query_tokens = 0");
  batch.max_query_tokens = 1;
  // 33 query heads on one KV head exceed the 32 per KV head the kernels support.
  expect_error_naming(
      [&] { cuda::paged_prefill_attention_cuda(cache, batch, q, 33, cuda::AttentionSplits::ByBatch, o, nullptr); },
      "n_heads = 33");
  expect_error_naming(
      [&] {
        cuda::paged_prefill_attention_cuda(cache, batch, {rows.data<bf16_bits>(), 100}, 4,
                                           cuda::AttentionSplits::ByBatch, o, nullptr);
      },
      "q.row_stride = 100");
  cache.head_dim = 96;
  expect_error_naming(prefill, "cache.head_dim = 96");
  cache.head_dim = 128;
  expect_error_naming(
      [&] {
        cuda::kv_cache_write_cuda(cache, batch, {rows.data<bf16_bits>() + 1, 128}, q, nullptr);
      },
      "k.data");
  check_cuda(cudaDeviceSynchronize(), "nothing launched");
}

#endif  // FP4SERVE_HAVE_CUDA

}  // namespace
}  // namespace fp4serve::test
