#include "server/request_fields.h"

#include <limits>
#include <random>

#include "io/json_file.h"

namespace fp4serve {

namespace {

uint64_t random_u64() {
  static thread_local std::mt19937_64 generator{std::random_device{}()};
  return generator();
}

float read_float(const nlohmann::json& object, std::string_view field, std::string_view where, float fallback) {
  const std::optional<double> value = optional_number(object, field, where);
  return value ? static_cast<float>(*value) : fallback;
}

}  // namespace

void read_sampling_fields(const nlohmann::json& object, std::string_view where, SamplingSpec& spec) {
  FP4_CHECK(object.is_object(), "{}: expected a JSON object, got {}", where, json_type_name(object));
  SamplingParams& s = spec.sampling;
  s.temperature = read_float(object, "temperature", where, s.temperature);
  s.top_p = read_float(object, "top_p", where, s.top_p);
  s.min_p = read_float(object, "min_p", where, s.min_p);
  if (const auto top_k = optional_int(object, "top_k", where)) {
    FP4_CHECK(*top_k == -1 || (*top_k >= 1 && *top_k <= std::numeric_limits<int32_t>::max()),
              "{}: field 'top_k' = {} must be -1 (all tokens) or at least 1", where, *top_k);
    s.top_k = static_cast<int32_t>(*top_k);
  }
  if (const auto seed = optional_int(object, "seed", where)) {
    s.seed = static_cast<uint64_t>(*seed);
    spec.has_seed = true;
  }
  if (object.contains("stop") && !object["stop"].is_null()) {
    spec.stop = read_string_or_list(object["stop"], "stop", where);
    FP4_CHECK(spec.stop.size() <= kMaxStopStrings, "{}: field 'stop' has {} strings; at most {} are allowed", where,
              spec.stop.size(), kMaxStopStrings);
  }
  if (object.contains("stop_token_ids") && !object["stop_token_ids"].is_null())
    spec.stop_token_ids = read_token_ids(object["stop_token_ids"], "stop_token_ids", where);
  spec.ignore_eos = optional_bool(object, "ignore_eos", where).value_or(spec.ignore_eos);
  spec.skip_special_tokens = optional_bool(object, "skip_special_tokens", where).value_or(spec.skip_special_tokens);
  if (const auto n = optional_int(object, "n", where)) {
    FP4_CHECK(*n >= 1 && *n <= kMaxSamplesPerPrompt, "{}: field 'n' = {} must be in [1, {}]", where, *n,
              kMaxSamplesPerPrompt);
    spec.n = *n;
  }
  s.validate(where);
}

void read_routing_fields(const nlohmann::json& object, std::string_view where, SamplingSpec& spec) {
  spec.return_routed_experts = optional_bool(object, "return_routed_experts", where).value_or(false);
  spec.routed_experts_start_len = optional_int(object, "routed_experts_start_len", where).value_or(0);
  FP4_CHECK(spec.routed_experts_start_len == 0 || spec.return_routed_experts,
            "{}: field 'routed_experts_start_len' needs 'return_routed_experts': true", where);
}

int64_t read_max_tokens(const nlohmann::json& value, std::string_view field, std::string_view where) {
  FP4_CHECK(value.is_number_integer(), "{}: field '{}' must be an integer, got {} {}", where, field,
            json_type_name(value), value.dump());
  FP4_CHECK(value.is_number_unsigned() || value.get<int64_t>() >= 0, "{}: field '{}' = {} must be >= 0", where,
            field, value.dump());
  FP4_CHECK(value.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int32_t>::max()),
            "{}: field '{}' = {} is too large", where, field, value.dump());
  return value.get<int64_t>();
}

int32_t read_top_logprobs(const nlohmann::json& value, std::string_view field, std::string_view where) {
  FP4_CHECK(value.is_number_integer(), "{}: field '{}' must be an integer, got {} {}", where, field,
            json_type_name(value), value.dump());
  const bool in_range = value.is_number_unsigned() ? value.get<uint64_t>() <= kMaxTopLogprobs
                                                   : value.get<int64_t>() >= 0 && value.get<int64_t>() <= kMaxTopLogprobs;
  FP4_CHECK(in_range, "{}: field '{}' = {} must be in [0, {}]", where, field, value.dump(), kMaxTopLogprobs);
  return value.get<int32_t>();
}

std::vector<int32_t> read_token_ids(const nlohmann::json& value, std::string_view field, std::string_view where) {
  FP4_CHECK(value.is_array() && !value.empty(), "{}: field '{}' must be a non-empty list of token ids, got {}",
            where, field, value.dump().substr(0, 200));
  std::vector<int32_t> ids;
  ids.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    const nlohmann::json& id = value[i];
    FP4_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 &&
                  id.get<int64_t>() <= std::numeric_limits<int32_t>::max() &&
                  (!id.is_number_unsigned() || id.get<uint64_t>() <= std::numeric_limits<int32_t>::max()),
              "{}: field '{}' entry {} = {} is not a token id (an integer >= 0)", where, field, i, id.dump());
    ids.push_back(id.get<int32_t>());
  }
  return ids;
}

std::vector<std::string> read_string_or_list(const nlohmann::json& value, std::string_view field,
                                             std::string_view where, bool* single) {
  if (single) *single = value.is_string();
  if (value.is_string()) return {value.get<std::string>()};
  FP4_CHECK(value.is_array(), "{}: field '{}' must be a string or a list of strings, got {}", where, field,
            json_type_name(value));
  std::vector<std::string> strings;
  for (size_t i = 0; i < value.size(); ++i) {
    FP4_CHECK(value[i].is_string(), "{}: field '{}' entry {} must be a string, got {}", where, field, i,
              json_type_name(value[i]));
    strings.push_back(value[i].get<std::string>());
  }
  return strings;
}

std::vector<GenerationJob> make_jobs(const std::vector<std::vector<int32_t>>& prompts, const SamplingSpec& spec,
                                     const std::string& rid) {
  FP4_CHECK(prompts.size() <= kMaxPromptsPerRequest, "the request holds {} prompts; at most {} are allowed",
            prompts.size(), kMaxPromptsPerRequest);
  const uint64_t seed = spec.has_seed ? spec.sampling.seed : random_u64();
  std::vector<GenerationJob> jobs;
  for (const std::vector<int32_t>& prompt : prompts) {
    for (int64_t i = 0; i < spec.n; ++i) {
      GenerationJob job{.request = {.input_ids = prompt,
                                    .sampling = spec.sampling,
                                    .max_new_tokens = spec.max_new_tokens,
                                    .stop_token_ids = spec.stop_token_ids,
                                    .ignore_eos = spec.ignore_eos,
                                    .return_routed_experts = spec.return_routed_experts,
                                    .routed_experts_start_len = spec.routed_experts_start_len},
                        .stop_strings = spec.stop,
                        .skip_special_tokens = spec.skip_special_tokens,
                        .rid = rid};
      job.request.sampling.seed = seed + static_cast<uint64_t>(i);
      jobs.push_back(std::move(job));
    }
  }
  return jobs;
}

std::string random_hex_id(size_t n_hex_digits) {
  std::string id;
  while (id.size() < n_hex_digits) id += fmt::format("{:016x}", random_u64());
  id.resize(n_hex_digits);
  return id;
}

}  // namespace fp4serve
