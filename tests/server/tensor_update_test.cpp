// /update_weights_from_tensor over HTTP with inline tensors (CUDA IPC runs on the device:
// scripts/device/update_from_tensor.sh): all of B's tensors, NVFP4 or bf16 quantized online, give the digest and the
// answers of B loaded from disk; a partial push changes exactly the tensors it names; every bad entry is refused
// naming the tensor and field with the served weights unchanged; weight_version and flush_cache act as on the disk
// path.
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "common/base64.h"
#include "engine/weights_digest.h"
#include "io/checkpoint.h"
#include "server_fixture.h"

namespace fp4serve::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const std::vector<std::string> kServeArgs = {"--max-request-body-bytes", "200000000"};

std::string torch_dtype(DType dtype) {
  switch (dtype) {
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::F32: return "float32";
    case DType::U8: return "uint8";
    case DType::F8_E4M3: return "float8_e4m3fn";
    default: throw std::runtime_error("no torch name for " + std::string(dtype_name(dtype)));
  }
}

// Every tensor of a checkpoint directory, by name.
std::map<std::string, std::pair<TensorInfo, std::vector<uint8_t>>> read_checkpoint(const fs::path& dir) {
  const Checkpoint checkpoint = Checkpoint::open(dir);
  std::map<std::string, std::pair<TensorInfo, std::vector<uint8_t>>> tensors;
  for (const std::string& name : checkpoint.tensor_names()) {
    const CheckpointTensor& t = checkpoint.tensor(name);
    tensors[name] = {*t.info, std::vector<uint8_t>(t.bytes.begin(), t.bytes.end())};
  }
  return tensors;
}

json inline_entry(const std::string& name, DType dtype, const std::vector<int64_t>& size,
                  std::span<const uint8_t> bytes) {
  return {{"name", name}, {"dtype", torch_dtype(dtype)}, {"size", size}, {"data", base64_encode(bytes)}};
}

// The entries of every tensor of `dir` whose name passes `keep`.
json entries_of(const fs::path& dir, const std::function<bool(const std::string&)>& keep = {}) {
  json entries = json::array();
  for (const auto& [name, tensor] : read_checkpoint(dir))
    if (!keep || keep(name)) entries.push_back(inline_entry(name, tensor.first.dtype, tensor.first.shape, tensor.second));
  return entries;
}

json push(httplib::Client& client, json entries, json extra = json::object(), int* status = nullptr) {
  json body = {{"serialized_named_tensors", json::array({std::move(entries)})}};
  if (!extra.is_null()) body.update(extra);  // `{}` arrives as null
  return post_json(client, "/update_weights_from_tensor", body, status);
}

std::string served_digest(httplib::Client& client) {
  return get_json(client, "/get_weights_digest")["weights_digest"].get<std::string>();
}

std::vector<int> prompt_of(int length) {
  std::vector<int> ids;
  for (int i = 0; i < length; ++i) ids.push_back(40 + (i * 13) % 70);
  return ids;
}

TEST(TensorUpdate, AllOfBInNvfp4EqualsBFromDisk) {
  Greedy fresh_b;
  {
    ServerProcess server_b(models().b);
    httplib::Client client = server_b.client();
    fresh_b = greedy_generate(client, prompt_of(37), 12);
  }
  ServerProcess server(models().a, kServeArgs);
  httplib::Client client = server.client();
  int status = 0;
  const json answer = push(client, entries_of(models().b), {{"weight_version", "b-pushed"}}, &status);
  ASSERT_EQ(status, 200) << answer.dump();
  EXPECT_EQ(answer["success"], true);
  EXPECT_EQ(answer["num_paused_requests"], 0);
  EXPECT_EQ(served_digest(client), digest_hex(checkpoint_digest(models().b)));
  const Greedy pushed = greedy_generate(client, prompt_of(37), 12);
  EXPECT_EQ(pushed.ids, fresh_b.ids);
  EXPECT_EQ(pushed.logprobs, fresh_b.logprobs);  // bitwise: the derived layouts were re-derived
  EXPECT_EQ(pushed.weight_version, "b-pushed");
  EXPECT_EQ(get_json(client, "/get_weight_version")["weight_version"], "b-pushed");
}

TEST(TensorUpdate, BInBf16IsQuantizedAsADiskReloadOfIt) {
  ServerProcess server(models().a, kServeArgs);
  httplib::Client client = server.client();
  const std::string digest_a = served_digest(client);
  int status = 0;
  const json answer = push(client, entries_of(models().b_bf16), {}, &status);
  ASSERT_EQ(status, 200) << answer.dump();
  const std::string pushed = served_digest(client);
  EXPECT_NE(pushed, digest_a);
  EXPECT_EQ(get_json(client, "/get_weight_version")["weight_version"], "default");  // none given: unchanged

  json reload = post_json(client, "/update_weights_from_disk", {{"model_path", models().a.string()}}, &status);
  ASSERT_EQ(status, 200) << reload.dump();
  ASSERT_EQ(served_digest(client), digest_a);
  reload = post_json(client, "/update_weights_from_disk", {{"model_path", models().b_bf16.string()}}, &status);
  ASSERT_EQ(status, 200) << reload.dump();
  EXPECT_EQ(served_digest(client), pushed) << "push of B-bf16 and disk reload of B-bf16 differ";
}

// The digest the server must report when `dir`'s tensors whose names pass `from_b` are replaced by `b`'s.
std::string digest_of_mix(const fs::path& a, const fs::path& b, const std::function<bool(const std::string&)>& from_b) {
  const auto tensors_a = read_checkpoint(a), tensors_b = read_checkpoint(b);
  std::vector<std::pair<std::string, Tensor>> mixed;
  for (const auto& [name, tensor] : tensors_a) {
    const auto& [info, bytes] = from_b(name) ? tensors_b.at(name) : tensor;
    Tensor t = Tensor::empty(info.shape, info.dtype, Device::CPU);
    std::memcpy(t.raw(), bytes.data(), bytes.size());
    mixed.emplace_back(name, t);
  }
  return digest_hex(weights_digest(std::move(mixed)));
}

TEST(TensorUpdate, APartialPushChangesOnlyTheTensorsItNames) {
  ServerProcess server(models().a, kServeArgs);
  httplib::Client client = server.client();
  const auto layer_1 = [](const std::string& name) { return name.starts_with("model.layers.1."); };
  int status = 0;
  json answer = push(client, entries_of(models().b, layer_1), {}, &status);
  ASSERT_EQ(status, 200) << answer.dump();
  const std::string mixed = digest_of_mix(models().a, models().b, layer_1);
  EXPECT_EQ(served_digest(client), mixed);
  EXPECT_NE(mixed, digest_hex(checkpoint_digest(models().a)));

  // One unquantized tensor alone, then the rest of B: B exactly.
  const auto final_norm = [](const std::string& name) { return name == "model.norm.weight"; };
  answer = push(client, entries_of(models().b, final_norm), {}, &status);
  ASSERT_EQ(status, 200) << answer.dump();
  EXPECT_EQ(served_digest(client), digest_of_mix(models().a, models().b, [&](const std::string& name) {
              return layer_1(name) || final_norm(name);
            }));
  answer = push(client, entries_of(models().b, [&](const std::string& name) { return !layer_1(name); }), {}, &status);
  ASSERT_EQ(status, 200) << answer.dump();
  EXPECT_EQ(served_digest(client), digest_hex(checkpoint_digest(models().b)));
}

TEST(TensorUpdate, EveryBadEntryIsRefusedNamingItAndChangesNothing) {
  ServerProcess server(models().a, kServeArgs);
  httplib::Client client = server.client();
  const std::string digest_a = served_digest(client);
  const auto b = read_checkpoint(models().b);
  const auto b_bf16 = read_checkpoint(models().b_bf16);
  const std::string q = "model.layers.0.self_attn.q_proj";
  auto entry = [&](const std::string& name) {
    const auto& [info, bytes] = b.at(name);
    return inline_entry(name, info.dtype, info.shape, bytes);
  };
  auto module = [&](const std::string& prefix) {  // an NVFP4 module's tensors, all of them
    json entries = json::array();
    for (const auto& [name, tensor] : b)
      if (name.starts_with(prefix + ".")) entries.push_back(entry(name));
    return entries;
  };
  // Valid tensors beside the bad one: nothing of them may be written either.
  const json good = module("model.layers.2.mlp.experts.3.down_proj");
  auto with_good = [&](json bad) {
    json entries = good;
    entries.push_back(std::move(bad));
    return entries;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<uint8_t> nan_bytes(reinterpret_cast<const uint8_t*>(&nan),
                                       reinterpret_cast<const uint8_t*>(&nan) + sizeof(float));
  const auto& norm = b.at("model.norm.weight");
  std::vector<uint8_t> bf16_with_inf = b_bf16.at(q + ".weight").second;
  bf16_with_inf[6] = 0x80, bf16_with_inf[7] = 0x7F;  // element 3 = +Inf

  struct Case {
    std::string what;
    json body;
    std::vector<std::string> message_has;
  };
  json nan_scale = module(q);
  for (json& e : nan_scale)
    if (e["name"] == q + ".weight_scale_2") e["data"] = base64_encode(nan_bytes);
  json bad_base64 = entry("model.norm.weight");
  bad_base64["data"] = "not*base64";
  json short_data = entry("model.norm.weight");
  short_data["data"] = base64_encode(std::span(norm.second).first(norm.second.size() - 2));
  json strided = entry("model.norm.weight");
  strided["stride"] = {2};
  json wrong_shape = inline_entry("model.norm.weight", DType::BF16, {norm.first.shape[0] / 2},
                                  std::span(norm.second).first(norm.second.size() / 2));
  json wrong_dtype = inline_entry("model.norm.weight", DType::F16, norm.first.shape, norm.second);
  json unknown = inline_entry("model.layers.0.self_attn.nope.weight", DType::BF16, norm.first.shape, norm.second);
  // torch's handle bytes: version, type, then the cudaIpcMemHandle_t ('c'); 'e' is an expandable segment.
  auto ipc_entry = [&](std::vector<uint8_t> handle, uint64_t storage_size_bytes) {
    json e = entry("model.norm.weight");
    e.erase("data");
    e["cuda_ipc"] = {{"device", 0}, {"handle", base64_encode(handle)}, {"storage_size_bytes", storage_size_bytes},
                     {"storage_offset_bytes", 0}};
    return e;
  };
  std::vector<uint8_t> torch_handle(66, 7);
  torch_handle[0] = 2, torch_handle[1] = 'c';
  std::vector<uint8_t> expandable = torch_handle;
  expandable[1] = 'e';
  json online_with_scale = json::array({inline_entry(q + ".weight", DType::BF16, b_bf16.at(q + ".weight").first.shape,
                                                     b_bf16.at(q + ".weight").second),
                                        entry(q + ".weight_scale_2")});
  json bf16_inf = json::array(
      {inline_entry(q + ".weight", DType::BF16, b_bf16.at(q + ".weight").first.shape, bf16_with_inf)});

  const std::vector<Case> cases = {
      {"unknown name", with_good(unknown), {"nope.weight", "not a tensor of this model"}},
      {"wrong shape", with_good(wrong_shape), {"model.norm.weight", "shape is"}},
      {"wrong dtype", with_good(wrong_dtype), {"model.norm.weight", "dtype is F16, expected BF16"}},
      {"bad base64", with_good(bad_base64), {"model.norm.weight", "'data'"}},
      {"short data", with_good(short_data), {"model.norm.weight", "'data' holds"}},
      {"non-contiguous stride", with_good(strided), {"model.norm.weight", "not contiguous"}},
      {"NaN scale", nan_scale, {q + ".weight_scale_2", "finite"}},
      {"incomplete NVFP4 module", json::array({entry(q + ".weight")}), {q + ".weight", "without", "weight_scale"}},
      {"bf16 weight given with a scale", online_with_scale, {q + ".weight_scale_2", "quantized online"}},
      {"bf16 weight with Inf", bf16_inf, {q + ".weight"}},
      {"CUDA IPC on a CPU server", with_good(ipc_entry(torch_handle, norm.second.size())),
       {"model.norm.weight", "--device cuda"}},
      {"bare 64-byte IPC handle on a CPU server", with_good(ipc_entry(std::vector<uint8_t>(64, 7), norm.second.size())),
       {"model.norm.weight", "--device cuda"}},
      {"expandable-segment IPC handle", with_good(ipc_entry(expandable, norm.second.size())),
       {"model.norm.weight", "expandable_segments"}},
      {"IPC handle of a wrong size", with_good(ipc_entry(std::vector<uint8_t>(40, 7), norm.second.size())),
       {"model.norm.weight", "'handle' holds 40 bytes"}},
      {"IPC storage too small", with_good(ipc_entry(torch_handle, norm.second.size() - 1)),
       {"model.norm.weight", "storage_size_bytes"}},
      {"unknown dtype name", with_good(json{{"name", "model.norm.weight"}, {"dtype", "int4"}, {"size", {1}},
                                            {"data", "AA=="}}), {"model.norm.weight", "'dtype'", "int4"}},
      {"no tensors", json::array(), {"serialized_named_tensors[0] is empty"}},
  };
  for (const Case& c : cases) {
    int status = 0;
    const json answer = push(client, c.body, {}, &status);
    EXPECT_EQ(status, 400) << c.what << ": " << answer.dump();
    EXPECT_EQ(answer["success"], false) << c.what;
    const std::string message = answer["message"].get<std::string>();
    for (const std::string& part : c.message_has)
      EXPECT_NE(message.find(part), std::string::npos) << c.what << ": '" << part << "' not in: " << message;
    EXPECT_EQ(served_digest(client), digest_a) << c.what << " changed the served weights";
  }

  int status = 0;
  const json two_ranks = post_json(client, "/update_weights_from_tensor",
                                   {{"serialized_named_tensors", json::array({good, good})}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_NE(two_ranks["message"].get<std::string>().find("tp_size 1"), std::string::npos) << two_ranks.dump();
  EXPECT_EQ(served_digest(client), digest_a);
  EXPECT_EQ(get_json(client, "/get_weight_version")["weight_version"], "default");
  // The server still serves, and still takes a good update.
  EXPECT_EQ(push(client, good, {}, &status)["success"], true);
  EXPECT_EQ(status, 200);
  EXPECT_EQ(served_digest(client), digest_of_mix(models().a, models().b, [](const std::string& name) {
              return name.starts_with("model.layers.2.mlp.experts.3.down_proj.");
            }));
}

// After a release that discarded the weights, nothing of them may survive: only a push of every tensor is taken.
TEST(TensorUpdate, DiscardedWeightsTakeOnlyAPushOfEveryTensor) {
  ServerProcess server(models().a, {"--weights-release-mode", "discard", "--max-request-body-bytes", "200000000"});
  httplib::Client client = server.client();
  int status = 0;
  post_json(client, "/release_memory_occupation", {{"tags", {"weights"}}}, &status);
  ASSERT_EQ(status, 200);
  json answer = push(client, entries_of(models().b), {}, &status);
  EXPECT_EQ(status, 400) << "an update into released weights was accepted: " << answer.dump();
  EXPECT_NE(answer["message"].get<std::string>().find("released"), std::string::npos) << answer.dump();
  post_json(client, "/resume_memory_occupation", {{"tags", {"weights"}}}, &status);
  ASSERT_EQ(status, 200);

  answer = push(client, entries_of(models().b, [](const std::string& name) {
                  return name.starts_with("model.layers.1.");
                }), {}, &status);
  EXPECT_EQ(status, 400) << answer.dump();
  EXPECT_NE(answer["message"].get<std::string>().find("must give every tensor"), std::string::npos) << answer.dump();
  get_json(client, "/get_weights_digest", &status);
  EXPECT_EQ(status, 503);  // still discarded

  answer = push(client, entries_of(models().b), {{"weight_version", "b"}}, &status);
  ASSERT_EQ(status, 200) << answer.dump();
  EXPECT_EQ(served_digest(client), digest_hex(checkpoint_digest(models().b)));
  EXPECT_EQ(greedy_generate(client, prompt_of(21), 4).weight_version, "b");
}

TEST(TensorUpdate, FlushCacheAsOnTheDiskPath) {
  ServerProcess server(models().a, kServeArgs);
  httplib::Client client = server.client();
  const std::vector<int> prompt = prompt_of(40);
  auto cached_tokens = [&] {
    const json answer = post_json(client, "/generate",
                                  {{"input_ids", prompt},
                                   {"sampling_params", {{"max_new_tokens", 2}, {"temperature", 0}}}});
    return answer["meta_info"]["cached_tokens"].get<int>();
  };
  cached_tokens();
  ASSERT_EQ(cached_tokens(), 32);  // whole 16-token pages of the prompt
  const json same_norm = entries_of(models().a, [](const std::string& name) { return name == "model.norm.weight"; });
  int status = 0;
  push(client, same_norm, {{"flush_cache", false}}, &status);  // the same bytes, the cache kept
  ASSERT_EQ(status, 200);
  EXPECT_EQ(cached_tokens(), 32);
  push(client, same_norm, {}, &status);  // flush_cache defaults to true
  ASSERT_EQ(status, 200);
  EXPECT_EQ(cached_tokens(), 0);
}

}  // namespace
}  // namespace fp4serve::test
