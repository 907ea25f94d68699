// Checkpoint directories: single file and sharded, every index inconsistency (missing shard, wrong shard, duplicate
// across shards, unlisted tensor, empty directory), shard planning, and the streaming CheckpointWriter.
#include "io/checkpoint.h"

#include <gtest/gtest.h>

#include "io/json_file.h"
#include "tests/io/io_test_util.h"

namespace fp4serve {
namespace {

using io_test::expect_error;
using io_test::TempDir;

// A tensor's bytes derived from its name and position, so any mix-up between tensors shows.
std::vector<uint8_t> pattern_bytes(const std::string& name, size_t n) {
  std::vector<uint8_t> bytes(n);
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(name.size() * 31 + name.back() + i * 7);
  return bytes;
}

void write_shard(const std::filesystem::path& path, const std::vector<TensorDecl>& decls) {
  SafetensorsWriter writer(path, decls);
  for (const auto& d : decls) writer.write(d.name, pattern_bytes(d.name, d.nbytes()));
  writer.finish();
}

void write_index(const std::filesystem::path& dir, const nlohmann::json& weight_map) {
  write_json_file(dir / kSafetensorsIndexFile, nlohmann::json{{"metadata", {{"total_size", 0}}},
                                                              {"weight_map", weight_map}});
}

// Two shards: s1 holds a, b; s2 holds c.
void write_two_shards(const TempDir& dir) {
  write_shard(dir / "s1.safetensors", {{"a", DType::F32, {4}}, {"b", DType::BF16, {2, 3}}});
  write_shard(dir / "s2.safetensors", {{"c", DType::U8, {5}}});
}

TEST(Checkpoint, OpensSingleFile) {
  TempDir dir;
  write_shard(dir / "model.safetensors", {{"x", DType::F32, {3}}, {"y", DType::U8, {2}}});
  auto checkpoint = Checkpoint::open(dir.path());
  EXPECT_EQ(checkpoint.dir(), dir.path());
  EXPECT_EQ(checkpoint.tensor_names(), (std::vector<std::string>{"x", "y"}));
  const CheckpointTensor& x = checkpoint.tensor("x");
  EXPECT_EQ(x.shard->path(), (dir / "model.safetensors").string());
  EXPECT_EQ(x.info->shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(std::vector<uint8_t>(x.bytes.begin(), x.bytes.end()), pattern_bytes("x", 12));
  EXPECT_EQ(checkpoint.find("z"), nullptr);
  expect_error([&] { checkpoint.tensor("z"); }, {dir.path().string(), "'z'"});
}

TEST(Checkpoint, OpensShardedIndexMappedAndUnmapped) {
  TempDir dir;
  write_two_shards(dir);
  write_index(dir.path(), {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}});
  auto checkpoint = Checkpoint::open(dir.path());
  EXPECT_EQ(checkpoint.shards().size(), 2u);
  EXPECT_EQ(checkpoint.tensor_names(), (std::vector<std::string>{"a", "b", "c"}));
  const CheckpointTensor& c = checkpoint.tensor("c");
  EXPECT_EQ(c.shard->path(), (dir / "s2.safetensors").string());
  EXPECT_EQ(std::vector<uint8_t>(c.bytes.begin(), c.bytes.end()), pattern_bytes("c", 5));

  // Unmapped: no views, the bytes come through the shard's reader.
  auto unmapped = Checkpoint::open(dir.path(), {.map = false});
  const CheckpointTensor& b = unmapped.tensor("b");
  EXPECT_TRUE(b.bytes.empty());
  std::vector<uint8_t> copy(b.info->nbytes);
  b.shard->read(*b.info, 0, copy);
  EXPECT_EQ(copy, pattern_bytes("b", 12));
}

TEST(Checkpoint, RejectsMissingShard) {
  TempDir dir;
  write_two_shards(dir);
  write_index(dir.path(), {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s3.safetensors"}});
  expect_error([&] { Checkpoint::open(dir.path()); },
               {kSafetensorsIndexFile, "shard 's3.safetensors'", "'c'", "does not exist"});
}

TEST(Checkpoint, RejectsTensorMappedToWrongShard) {
  TempDir dir;
  write_two_shards(dir);
  write_index(dir.path(), {{"a", "s1.safetensors"}, {"b", "s2.safetensors"}, {"c", "s2.safetensors"}});
  expect_error([&] { Checkpoint::open(dir.path()); },
               {kSafetensorsIndexFile, "'b'", "mapped to shard 's2.safetensors'", "stored in 's1.safetensors'"});
}

TEST(Checkpoint, RejectsIndexedTensorThatNoShardHolds) {
  TempDir dir;
  write_two_shards(dir);
  write_index(dir.path(),
              {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}, {"d", "s2.safetensors"}});
  expect_error([&] { Checkpoint::open(dir.path()); }, {kSafetensorsIndexFile, "'d'", "no shard holds it"});
}

TEST(Checkpoint, RejectsTensorInTwoShards) {
  TempDir dir;
  write_two_shards(dir);
  write_shard(dir / "s3.safetensors", {{"a", DType::F32, {4}}, {"c", DType::U8, {5}}});
  write_index(dir.path(), {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s3.safetensors"}});
  expect_error([&] { Checkpoint::open(dir.path()); }, {"'a'", "two shards", "s1.safetensors", "s3.safetensors"});
}

TEST(Checkpoint, RejectsShardTensorMissingFromIndex) {
  TempDir dir;
  write_two_shards(dir);
  write_index(dir.path(), {{"a", "s1.safetensors"}, {"c", "s2.safetensors"}});
  expect_error([&] { Checkpoint::open(dir.path()); },
               {kSafetensorsIndexFile, "'b'", "s1.safetensors", "missing from the index"});
}

TEST(Checkpoint, RejectsDirectoriesWithoutACheckpoint) {
  TempDir dir;
  expect_error([&] { Checkpoint::open(dir.path()); }, {dir.path().string(), "model.safetensors", "empty"});
  io_test::write_file(dir / "config.json", "{}");
  expect_error([&] { Checkpoint::open(dir.path()); }, {dir.path().string(), "no .safetensors files"});
  write_shard(dir / "weights.safetensors", {{"a", DType::U8, {1}}});
  expect_error([&] { Checkpoint::open(dir.path()); }, {dir.path().string(), "weights.safetensors", "without an index"});
  expect_error([&] { Checkpoint::open(dir / "absent"); }, {"absent", "not a directory"});
}

TEST(Checkpoint, RejectsAmbiguousOrMalformedIndex) {
  TempDir dir;
  write_two_shards(dir);
  io_test::write_file(dir / kSafetensorsIndexFile, R"({"weight_map": {"a": "s1.safetensors",)");
  expect_error([&] { Checkpoint::open(dir.path()); }, {kSafetensorsIndexFile, "malformed JSON"});
  io_test::write_file(dir / kSafetensorsIndexFile, R"({"weights": {}})");
  expect_error([&] { Checkpoint::open(dir.path()); }, {kSafetensorsIndexFile, "weight_map"});
  io_test::write_file(dir / kSafetensorsIndexFile, R"({"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}})");
  expect_error([&] { Checkpoint::open(dir.path()); }, {kSafetensorsIndexFile, "duplicate key 'a'"});
  write_index(dir.path(), {{"a", "../s1.safetensors"}});
  expect_error([&] { Checkpoint::open(dir.path()); }, {kSafetensorsIndexFile, "'a'", "not a plain file name"});
  write_index(dir.path(), {{"a", 3}});
  expect_error([&] { Checkpoint::open(dir.path()); }, {kSafetensorsIndexFile, "weight_map['a']"});

  write_index(dir.path(), {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}});
  write_shard(dir / "model.safetensors", {{"a", DType::F32, {4}}});
  expect_error([&] { Checkpoint::open(dir.path()); }, {dir.path().string(), "both", "ambiguous"});
}

TEST(Checkpoint, ShardErrorsNameTheShard) {
  TempDir dir;
  write_two_shards(dir);
  io_test::write_file(dir / "s2.safetensors", io_test::safetensors_bytes("{}", "junk"));
  write_index(dir.path(), {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}});
  expect_error([&] { Checkpoint::open(dir.path()); }, {"s2.safetensors", "trailing bytes"});
}

// ------------------------------------------------------------------------------------------------------- writing

TEST(PlanShards, GreedyInOrderWithOversizedTensorsAlone) {
  const std::vector<TensorDecl> tensors = {{"a", DType::U8, {40}}, {"b", DType::U8, {50}}, {"c", DType::U8, {20}},
                                           {"big", DType::U8, {300}}, {"d", DType::U8, {100}}, {"e", DType::U8, {0}}};
  const auto shards = plan_shards(tensors, 100);
  ASSERT_EQ(shards.size(), 4u);
  auto names = [](const ShardPlan& s) {
    std::vector<std::string> n;
    for (const auto& t : s.tensors) n.push_back(t.name);
    return n;
  };
  EXPECT_EQ(names(shards[0]), (std::vector<std::string>{"a", "b"}));  // 90; adding c would make 110
  EXPECT_EQ(names(shards[1]), (std::vector<std::string>{"c"}));
  EXPECT_EQ(names(shards[2]), (std::vector<std::string>{"big"}));     // larger than the limit: alone
  EXPECT_EQ(names(shards[3]), (std::vector<std::string>{"d", "e"}));  // exactly at the limit is allowed
  EXPECT_EQ(shards[0].nbytes, 90u);
  EXPECT_EQ(shards[0].file_name, "model-00001-of-00004.safetensors");
  EXPECT_EQ(shards[3].file_name, "model-00004-of-00004.safetensors");
  EXPECT_EQ(plan_shards(tensors, 1 << 20).size(), 1u);
}

TEST(CheckpointWriter, WritesShardsAndIndexThatCheckpointReadsBack) {
  TempDir dir;
  const auto out = dir / "ckpt";
  CheckpointWriter writer(out, 64);
  const std::vector<TensorDecl> decls = {{"w1", DType::BF16, {4, 4}}, {"w2", DType::F32, {8}},
                                         {"w3", DType::U8, {100}}, {"s", DType::F32, {}}};
  for (const auto& d : decls) writer.add(d);
  expect_error([&] { writer.add({"w2", DType::U8, {1}}); }, {"'w2'", "twice"});
  std::vector<std::string> produced;
  writer.write([&](const TensorDecl& t, std::span<uint8_t> bytes) {
    produced.push_back(t.name);
    ASSERT_EQ(bytes.size(), t.nbytes());
    auto pattern = pattern_bytes(t.name, bytes.size());
    std::copy(pattern.begin(), pattern.end(), bytes.begin());
  });
  EXPECT_EQ(produced, (std::vector<std::string>{"w1", "w2", "w3", "s"}));

  // 32 + 32 fit the 64-byte limit; w3 (100) gets its own shard; s (4) starts the third.
  const nlohmann::json index = read_json_file(out / kSafetensorsIndexFile);
  EXPECT_EQ(index["metadata"]["total_size"], 32 + 32 + 100 + 4);
  EXPECT_EQ(index["weight_map"]["w2"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["w3"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["s"], "model-00003-of-00003.safetensors");

  auto checkpoint = Checkpoint::open(out);
  for (const auto& d : decls) {
    const CheckpointTensor& t = checkpoint.tensor(d.name);
    EXPECT_EQ(t.info->dtype, d.dtype);
    EXPECT_EQ(t.info->shape, d.shape);
    EXPECT_EQ(std::vector<uint8_t>(t.bytes.begin(), t.bytes.end()), pattern_bytes(d.name, d.nbytes()));
    EXPECT_EQ(t.shard->metadata().at("format"), "pt");
  }
  // A directory that already holds a checkpoint is not overwritten.
  expect_error([&] { CheckpointWriter(out, 64); }, {out.string(), "refusing to overwrite"});
}

TEST(CheckpointWriter, ProducerFailureLeavesNoIndex) {
  TempDir dir;
  CheckpointWriter writer(dir / "ckpt", 1 << 20);
  writer.add({"a", DType::U8, {4}});
  writer.add({"b", DType::U8, {4}});
  EXPECT_THROW(writer.write([](const TensorDecl& t, std::span<uint8_t>) {
                 FP4_CHECK(t.name != "b", "cannot produce {}", t.name);
               }),
               Error);
  EXPECT_FALSE(std::filesystem::exists(dir / "ckpt" / kSafetensorsIndexFile));
  EXPECT_FALSE(std::filesystem::exists(dir / "ckpt" / "model-00001-of-00001.safetensors"));
}

}  // namespace
}  // namespace fp4serve
