// Qwen3Model beyond the golden numbers: the KV cache and batching change nothing (bit for bit), the load /
// post-process cycle is enforced, tied embeddings are bound once, and bad checkpoints fail naming the tensor.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "engine/weight_loader.h"
#include "format/e4m3.h"
#include "test_support.h"

namespace fp4serve::testing_support {
namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;

// A KV cache of n_pages pages of 4 tokens for `config` (small pages: sequences cross page boundaries).
KvCacheTensors make_kv_cache(const ModelConfig& config, int64_t n_pages) {
  const Shape shape{config.num_hidden_layers, n_pages, 4, config.num_key_value_heads, config.head_dim};
  return {Tensor::empty(shape, DType::BF16, Device::CPU), Tensor::empty(shape, DType::BF16, Device::CPU)};
}

std::vector<float> row(const Tensor& logits, int64_t r) {
  const int64_t V = logits.shape[1];
  return {logits.data<float>() + r * V, logits.data<float>() + (r + 1) * V};
}

class LoadedModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("model_test");
    config_ = tiny_config(Architecture::Qwen3Moe);
    write_checkpoint(dir_->path(), config_, QuantConfig{}, random_bf16_tensors(config_, 3));
  }
  static void TearDownTestSuite() { delete dir_; }
  static inline TempDir* dir_ = nullptr;
  static inline ModelConfig config_;
};

TEST_F(LoadedModel, DecodingWithTheKvCacheEqualsTheFullSequenceForward) {
  auto model = load_model(dir_->path());
  const std::vector<int32_t> tokens{5, 17, 250, 3, 3, 99, 42, 7, 128, 64, 1};
  const std::vector<int32_t> pages{2, 0, 1};  // 12 slots, scattered
  const KvCacheTensors full_kv = make_kv_cache(config_, 3), step_kv = make_kv_cache(config_, 3);

  const ForwardOutput full =
      model->forward({.sequences = {{.token_ids = tokens, .start_position = 0, .page_table = pages}},
                      .kv_cache = &full_kv,
                      .all_logits = true});
  // Prefill the first 5 tokens, then decode the rest one at a time.
  const std::span<const int32_t> all(tokens);
  ForwardOutput step = model->forward(
      {.sequences = {{.token_ids = all.first(5), .start_position = 0, .page_table = pages}}, .kv_cache = &step_kv});
  EXPECT_EQ(row(step.last_logits, 0), row(full.all_logits, 4));
  for (size_t p = 5; p < tokens.size(); ++p) {
    step = model->forward({.sequences = {{.token_ids = all.subspan(p, 1),
                                          .start_position = static_cast<int64_t>(p),
                                          .page_table = pages}},
                           .kv_cache = &step_kv});
    EXPECT_EQ(row(step.last_logits, 0), row(full.all_logits, static_cast<int64_t>(p))) << "position " << p;
  }
  EXPECT_EQ(std::memcmp(full_kv.k.raw(), step_kv.k.raw(), full_kv.k.nbytes()), 0);
  EXPECT_EQ(std::memcmp(full_kv.v.raw(), step_kv.v.raw(), full_kv.v.nbytes()), 0);
}

TEST_F(LoadedModel, ABatchOfDifferentLengthsEqualsEachSequenceAlone) {
  auto model = load_model(dir_->path());
  const std::vector<std::vector<int32_t>> prompts{{1, 2, 3, 4, 5, 6, 7}, {200}, {9, 8, 7, 6, 5, 4, 3, 2, 1, 0}};
  const std::vector<std::vector<int32_t>> tables{{0, 1}, {2}, {3, 4, 5}};
  const KvCacheTensors kv = make_kv_cache(config_, 6);
  ForwardBatch batch{.sequences = {}, .kv_cache = &kv, .all_logits = true};
  for (size_t s = 0; s < prompts.size(); ++s)
    batch.sequences.push_back({.token_ids = prompts[s], .start_position = 0, .page_table = tables[s]});
  const ForwardOutput together = model->forward(batch);
  EXPECT_EQ(together.last_logits.shape, (Shape{3, config_.vocab_size}));
  EXPECT_EQ(together.all_logits.shape, (Shape{18, config_.vocab_size}));

  int64_t first_row = 0;
  for (size_t s = 0; s < prompts.size(); ++s) {
    const KvCacheTensors alone_kv = make_kv_cache(config_, 6);
    const ForwardOutput alone =
        model->forward({.sequences = {{.token_ids = prompts[s], .start_position = 0, .page_table = tables[s]}},
                        .kv_cache = &alone_kv,
                        .all_logits = true});
    for (size_t t = 0; t < prompts[s].size(); ++t)
      EXPECT_EQ(row(together.all_logits, first_row + static_cast<int64_t>(t)), row(alone.all_logits, t))
          << "sequence " << s << " token " << t;
    EXPECT_EQ(row(together.last_logits, static_cast<int64_t>(s)), row(alone.last_logits, 0));
    first_row += static_cast<int64_t>(prompts[s].size());
  }
}

TEST_F(LoadedModel, PostProcessingRunsExactlyOncePerLoad) {
  Qwen3Model model(config_, QuantConfig{}, {});
  EXPECT_THAT([&] { model.process_weights_after_loading(); },
              ThrowsMessage<Error>(HasSubstr("before any weights were loaded")));
  const KvCacheTensors kv = make_kv_cache(config_, 1);
  const std::vector<int32_t> token{1}, pages{0};
  const ForwardBatch batch{.sequences = {{.token_ids = token, .start_position = 0, .page_table = pages}},
                           .kv_cache = &kv};
  EXPECT_THAT([&] { model.forward(batch); }, ThrowsMessage<Error>(HasSubstr("weights are not ready")));
  WeightLoader loader(model);
  loader.load(dir_->path(), SourceFormat::Native);  // marks raw weights, then post-processes once
  EXPECT_THAT([&] { model.process_weights_after_loading(); },
              ThrowsMessage<Error>(HasSubstr("called twice after one load")));
  const std::vector<float> before = row(model.forward(batch).last_logits, 0);
  loader.load(dir_->path(), SourceFormat::Native);  // a reload post-processes again
  EXPECT_EQ(row(model.forward(batch).last_logits, 0), before);
  model.mark_raw_weights_loaded();
  model.process_weights_after_loading();
}

TEST_F(LoadedModel, RejectsMalformedBatches) {
  auto model = load_model(dir_->path());
  const KvCacheTensors kv = make_kv_cache(config_, 2);
  const std::vector<int32_t> tokens{1, 2, 3, 4, 5}, one_page{0}, bad_page{0, 7};
  auto run = [&](std::span<const int32_t> ids, int64_t start, std::span<const int32_t> table) {
    model->forward({.sequences = {{.token_ids = ids, .start_position = start, .page_table = table}}, .kv_cache = &kv});
  };
  EXPECT_THAT([&] { run(tokens, 0, one_page); }, ThrowsMessage<Error>(HasSubstr("1 pages of 4 tokens, too few")));
  EXPECT_THAT([&] { run(tokens, 0, bad_page); }, ThrowsMessage<Error>(HasSubstr("page 7 outside [0, 2)")));
  EXPECT_THAT([&] { run({}, 0, one_page); }, ThrowsMessage<Error>(HasSubstr("has 0 new tokens")));
  const std::vector<int32_t> out_of_vocab{259};
  EXPECT_THAT([&] { run(out_of_vocab, 0, one_page); }, ThrowsMessage<Error>(HasSubstr("token id 259")));
  const KvCacheTensors wrong = make_kv_cache(tiny_config(Architecture::Qwen3Moe, false), 2);
  KvCacheTensors f32 = wrong;
  f32.k.dtype = DType::F32;
  EXPECT_THAT(
      [&] {
        model->forward(
            {.sequences = {{.token_ids = tokens, .start_position = 0, .page_table = one_page}}, .kv_cache = &f32});
      },
      ThrowsMessage<Error>(HasSubstr("KV cache K F32")));
}

TEST(Qwen3Model, TiedEmbeddingsAreOneParameterBoundOnce) {
  const ModelConfig config = tiny_config(Architecture::Qwen3, true);
  Qwen3Model model(config, QuantConfig{}, {});
  EXPECT_FALSE(model.params().contains("lm_head.weight"));
  int embed_bindings = 0;
  for (const CheckpointBinding& b : model.checkpoint_bindings()) {
    EXPECT_NE(b.checkpoint_name, "lm_head.weight");
    embed_bindings += b.checkpoint_name == "model.embed_tokens.weight";
  }
  EXPECT_EQ(embed_bindings, 1);
  // A quantization config that would quantize the tied lm_head is refused.
  QuantConfig quantize_lm_head = nvfp4_quant_config();
  quantize_lm_head.exclude_modules = {"model.layers.*.mlp.gate"};
  EXPECT_THAT([&] { Qwen3Model(config, quantize_lm_head, {}); },
              ThrowsMessage<Error>(HasSubstr("add \"lm_head\" to exclude_modules")));
}

TEST(Qwen3Model, ParameterNamesAreFusedLikeHf) {
  const ModelConfig config = tiny_config(Architecture::Qwen3Moe);
  Qwen3Model bf16(config, QuantConfig{}, {});
  for (const char* name : {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.mlp.experts.w13_weight",
                           "model.layers.0.mlp.experts.w2_weight", "model.layers.0.mlp.gate.weight",
                           "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"})
    EXPECT_TRUE(bf16.params().contains(name)) << name;
  EXPECT_EQ(bf16.params().get("model.layers.0.self_attn.qkv_proj.weight").shape, (Shape{256, 128}));
  Qwen3Model nvfp4(config, nvfp4_quant_config(), {});
  EXPECT_TRUE(nvfp4.is_nvfp4());
  EXPECT_EQ(nvfp4.params().get("model.layers.0.self_attn.qkv_proj.weight").dtype, DType::U8);
  EXPECT_EQ(nvfp4.params().get("model.layers.0.mlp.gate.weight").dtype, DType::BF16);  // routers stay bf16
  EXPECT_EQ(nvfp4.params().get("lm_head.weight").dtype, DType::BF16);                  // excluded
  // Excluding only q_proj would split the fused qkv_proj: refused naming both modules.
  QuantConfig split = nvfp4_quant_config();
  split.exclude_modules.push_back("model.layers.1.self_attn.q_proj");
  EXPECT_THAT([&] { Qwen3Model(config, split, {}); },
              ThrowsMessage<Error>(HasSubstr("excludes 'model.layers.1.self_attn.q_proj' but not "
                                             "'model.layers.1.self_attn.k_proj'")));
}

// Bad checkpoints, through the weight loader: the error names the tensor at fault.
class BadCheckpoint : public ::testing::Test {
 protected:
  void expect_load_error(const std::function<void(TensorMap&)>& corrupt, const std::string& message) {
    const ModelConfig config = tiny_config(Architecture::Qwen3Moe);
    TensorMap tensors = quantize_tensors_nvfp4(config, random_bf16_tensors(config, 4), 0.01f);
    corrupt(tensors);
    TempDir dir("bad_checkpoint");
    write_checkpoint(dir.path(), config, nvfp4_quant_config(), tensors);
    Qwen3Model model(config, nvfp4_quant_config(), {.act_quant = ActQuant::Static});
    EXPECT_THAT([&] { WeightLoader(model).load(dir.path(), SourceFormat::Native); },
                ThrowsMessage<Error>(HasSubstr(message)));
  }
  static void set_f32(TensorMap& m, const std::string& name, float value) {
    std::memcpy(m.at(name).bytes.data(), &value, sizeof(float));
  }
};

TEST_F(BadCheckpoint, MissingExpert) {
  expect_load_error([](TensorMap& m) { m.erase("model.layers.2.mlp.experts.5.up_proj.weight"); },
                    "model.layers.2.mlp.experts.5.up_proj.weight");
}

TEST_F(BadCheckpoint, WrongShape) {
  expect_load_error(
      [](TensorMap& m) {
        m.at("model.layers.1.self_attn.k_proj.weight_scale").shape = {32, 16};
      },
      "model.layers.1.self_attn.k_proj.weight_scale");
}

TEST_F(BadCheckpoint, WrongDtype) {
  expect_load_error([](TensorMap& m) { m.at("model.layers.0.mlp.gate.weight").dtype = DType::F16; },
                    "model.layers.0.mlp.gate.weight");
}

TEST_F(BadCheckpoint, NanZeroAndNegativeScales) {
  const std::string ws2 = "model.layers.3.mlp.experts.0.down_proj.weight_scale_2";
  const std::string input = "model.layers.0.self_attn.o_proj.input_scale";
  expect_load_error([&](TensorMap& m) { set_f32(m, ws2, std::numeric_limits<float>::quiet_NaN()); }, ws2);
  expect_load_error([&](TensorMap& m) { set_f32(m, ws2, 0.0f); }, ws2);
  expect_load_error([&](TensorMap& m) { set_f32(m, input, -1.0f); }, input);
  const std::string block = "model.layers.1.mlp.experts.3.gate_proj.weight_scale";
  expect_load_error([&](TensorMap& m) { m.at(block).bytes[5] = kE4M3NaNCode; }, block);
}

}  // namespace
}  // namespace fp4serve::testing_support
