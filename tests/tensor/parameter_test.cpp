#include "tensor/parameter.h"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "common/error.h"

namespace fp4serve {
namespace {

Tensor filled_f32(const Shape& shape, float start) {
  Tensor t = Tensor::empty(shape, DType::F32, Device::CPU);
  std::iota(t.span<float>().begin(), t.span<float>().end(), start);
  return t;
}

TEST(Tensor, EmptyIsZeroedAndSized) {
  Tensor t = Tensor::empty({3, 5}, DType::BF16, Device::CPU);
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t.nbytes(), 30u);
  for (uint16_t v : t.span<uint16_t>()) EXPECT_EQ(v, 0);
  EXPECT_EQ(t.describe(), "BF16 [3, 5] on cpu");
}

TEST(Tensor, RowsViewSharesStorage) {
  Tensor t = filled_f32({4, 3}, 0);
  Tensor middle = t.rows(1, 2);
  EXPECT_EQ(middle.storage, t.storage);
  EXPECT_EQ(middle.shape, (Shape{2, 3}));
  EXPECT_EQ(middle.data<float>()[0], 3.0f);
  middle.data<float>()[5] = -1;
  EXPECT_EQ(t.data<float>()[8], -1.0f);
  EXPECT_THROW(t.rows(3, 2), Error);
}

TEST(ParameterSet, CopyOrRebindKeepsAddressWhenShapeAndDtypeMatch) {
  ParameterSet params;
  params.add("w", filled_f32({2, 2}, 0));
  uint8_t* before = params.get("w").raw();
  EXPECT_EQ(params.copy_or_rebind("w", filled_f32({2, 2}, 10)), BindOutcome::Copied);
  EXPECT_EQ(params.get("w").raw(), before);
  EXPECT_EQ(params.get("w").data<float>()[3], 13.0f);
}

TEST(ParameterSet, CopyOrRebindRebindsOnShapeOrDtypeChangeAndRegistersNewNames) {
  ParameterSet params;
  params.add("w", filled_f32({2, 2}, 0));
  Tensor wider = filled_f32({2, 3}, 0);
  EXPECT_EQ(params.copy_or_rebind("w", wider), BindOutcome::Rebound);
  EXPECT_EQ(params.get("w").raw(), wider.raw());
  Tensor as_bytes = Tensor::empty({2, 3}, DType::U8, Device::CPU);
  EXPECT_EQ(params.copy_or_rebind("w", as_bytes), BindOutcome::Rebound);
  EXPECT_EQ(params.get("w").dtype, DType::U8);
  EXPECT_EQ(params.copy_or_rebind("new", wider), BindOutcome::Registered);
  EXPECT_TRUE(params.contains("new"));
}

TEST(ParameterSet, AliasWhenDerivedHasSourceShape) {
  ParameterSet params;
  params.add("weight_scale", filled_f32({128, 4}, 0));
  uint8_t* source_address = params.get("weight_scale").raw();
  EXPECT_EQ(params.alias_or_bind_derived("weight_scale", "weight_scale_interleaved", filled_f32({128, 4}, 100)),
            BindOutcome::Aliased);
  EXPECT_TRUE(params.are_aliases("weight_scale", "weight_scale_interleaved"));
  EXPECT_EQ(params.get("weight_scale_interleaved").raw(), source_address);
  EXPECT_EQ(params.get("weight_scale").data<float>()[0], 100.0f);  // derived bytes live in the source storage
  EXPECT_EQ(params.names_of("weight_scale"), (std::vector<std::string>{"weight_scale", "weight_scale_interleaved"}));
  EXPECT_EQ(params.storage_uses().size(), 1u);
  EXPECT_EQ(params.total_bytes(), 128u * 4 * 4);
  // A second derivation (a reload) writes into the same storage again.
  EXPECT_EQ(params.alias_or_bind_derived("weight_scale", "weight_scale_interleaved", filled_f32({128, 4}, 7)),
            BindOutcome::Aliased);
  EXPECT_EQ(params.get("weight_scale").raw(), source_address);
  EXPECT_EQ(params.get("weight_scale").data<float>()[0], 7.0f);
}

TEST(ParameterSet, DerivedWithOtherShapeGetsItsOwnStorageAndKeepsItOnReload) {
  ParameterSet params;
  params.add("weight_scale", filled_f32({100, 3}, 0));
  EXPECT_EQ(params.alias_or_bind_derived("weight_scale", "weight_scale_interleaved", filled_f32({128, 4}, 0)),
            BindOutcome::Registered);
  EXPECT_FALSE(params.are_aliases("weight_scale", "weight_scale_interleaved"));
  uint8_t* derived_address = params.get("weight_scale_interleaved").raw();
  EXPECT_EQ(params.alias_or_bind_derived("weight_scale", "weight_scale_interleaved", filled_f32({128, 4}, 1)),
            BindOutcome::Copied);
  EXPECT_EQ(params.get("weight_scale_interleaved").raw(), derived_address);
  EXPECT_EQ(params.storage_uses().size(), 2u);
  EXPECT_EQ(params.total_bytes(), (100u * 3 + 128u * 4) * 4);
}

TEST(ParameterSet, RebindingAnAliasDetachesOnlyThatName) {
  ParameterSet params;
  params.add("a", filled_f32({4}, 0));
  params.alias_or_bind_derived("a", "b", filled_f32({4}, 1));
  EXPECT_EQ(params.copy_or_rebind("b", filled_f32({5}, 0)), BindOutcome::Rebound);
  EXPECT_FALSE(params.are_aliases("a", "b"));
  EXPECT_EQ(params.get("a").shape, (Shape{4}));
}

TEST(ParameterSet, ErrorsNameTheParameter) {
  ParameterSet params;
  params.add("x", filled_f32({1}, 0));
  try {
    params.get("missing.weight");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.weight"), std::string::npos);
  }
  EXPECT_THROW(params.add("x", filled_f32({1}, 0)), Error);
  EXPECT_THROW(params.alias_or_bind_derived("nope", "d", filled_f32({1}, 0)), Error);
}

TEST(ParameterSet, InspectCountsEachStorageOnce) {
  ParameterSet params;
  params.add("a", filled_f32({8}, 0));
  params.alias_or_bind_derived("a", "a_derived", filled_f32({8}, 0));
  params.add("b", filled_f32({2}, 0));
  std::string report = params.inspect();
  EXPECT_NE(report.find("a = a_derived"), std::string::npos) << report;
  EXPECT_NE(report.find("40 B  total (2 storages, 3 names)"), std::string::npos) << report;
}

}  // namespace
}  // namespace fp4serve
