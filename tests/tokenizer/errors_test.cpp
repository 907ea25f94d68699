// Unsupported or malformed tokenizer.json components are refused at load with a message naming the component
// and where it sits in the file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "tests/tokenizer/fixtures.h"
#include "tokenizer/tokenizer.h"

namespace fp4serve {
namespace {

std::string load_error(const nlohmann::json& spec) {
  try {
    Tokenizer::from_json(spec);
  } catch (const Error& e) {
    return e.what();
  }
  return "(loaded without error)";
}

void expect_error(const nlohmann::json& spec, const std::vector<std::string>& fragments) {
  const std::string message = load_error(spec);
  for (const std::string& fragment : fragments) {
    EXPECT_NE(message.find(fragment), std::string::npos) << "missing \"" << fragment << "\" in: " << message;
  }
}

TEST(TokenizerErrors, UnsupportedModel) {
  nlohmann::json spec = test::synth_tokenizer_json();
  spec["model"] = {{"type", "WordPiece"}, {"vocab", {{"a", 0}}}, {"unk_token", "[UNK]"}};
  expect_error(spec, {"tokenizer.json: model", "\"WordPiece\"", "not supported"});
  spec["model"] = test::synth_tokenizer_json()["model"];
  spec["model"]["byte_fallback"] = true;
  expect_error(spec, {"model", "\"byte_fallback\""});
  spec["model"]["byte_fallback"] = false;
  spec["model"]["dropout"] = 0.1;
  expect_error(spec, {"\"dropout\""});
}

TEST(TokenizerErrors, UnsupportedPreTokenizerNamesItsPath) {
  nlohmann::json spec = test::qwen_style_tokenizer_json();
  spec["pre_tokenizer"]["pretokenizers"][1] = {{"type", "Metaspace"}, {"replacement", "\u2581"}};
  expect_error(spec, {"pre_tokenizer.pretokenizers[1]", "\"Metaspace\"", "not supported"});
  spec = test::qwen_style_tokenizer_json();
  spec["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "MergedWithPrevious";
  expect_error(spec, {"pre_tokenizer.pretokenizers[0]", "\"MergedWithPrevious\""});
  spec["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Isolated";
  spec["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}};
  expect_error(spec, {"pre_tokenizer.pretokenizers[0].pattern.Regex", "cannot compile regex"});
}

TEST(TokenizerErrors, UnsupportedNormalizerDecoderPostProcessor) {
  nlohmann::json spec = test::qwen_style_tokenizer_json();
  spec["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Lowercase"}}}}};
  expect_error(spec, {"normalizer.normalizers[1]", "\"Lowercase\""});
  spec = test::qwen_style_tokenizer_json();
  spec["decoder"] = {{"type", "WordPiece"}};
  expect_error(spec, {"decoder", "\"WordPiece\""});
  spec = test::qwen_style_tokenizer_json();
  spec["post_processor"] = {{"type", "BertProcessing"}};
  expect_error(spec, {"post_processor", "\"BertProcessing\""});
  spec = test::qwen_style_tokenizer_json();
  spec["truncation"] = {{"max_length", 10}};
  expect_error(spec, {"\"truncation\""});
}

TEST(TokenizerErrors, MalformedFields) {
  nlohmann::json spec = test::synth_tokenizer_json();
  spec["added_tokens"][0]["content"] = 5;
  expect_error(spec, {"added_tokens[0]", "\"content\""});
  spec = test::synth_tokenizer_json();
  spec["pre_tokenizer"]["use_regex"] = "yes";
  expect_error(spec, {"pre_tokenizer", "\"use_regex\"", "boolean"});
  spec = test::synth_tokenizer_json();
  spec["model"]["vocab"]["x"] = -3;
  expect_error(spec, {"model.vocab", "\"x\""});
  spec = test::synth_tokenizer_json();
  spec["post_processor"] = {{"type", "TemplateProcessing"}, {"single", {{{"SpecialToken", {{"id", 5}}}}}}};
  expect_error(spec, {"tokenizer.json", "malformed field"});
  spec = test::synth_tokenizer_json();
  spec.erase("model");
  expect_error(spec, {"\"model\" is missing"});
}

// Found by fuzz_tokenizer_json: one added token with id 2e9 made the decode table allocate ~150 GB.
TEST(TokenizerErrors, AHugeTokenIdIsRefusedBeforeAllocating) {
  nlohmann::json spec = test::synth_tokenizer_json();
  spec["added_tokens"][0]["id"] = 2000000000;
  expect_error(spec, {"tokenizer.json", "token id 2000000000 is too large", "below 2097152"});
  spec = test::synth_tokenizer_json();
  spec["model"]["vocab"]["x"] = kMaxVocabSize;
  expect_error(spec, {"is too large"});
}

// A post-processor template id outside the vocabulary would be prepended to every encoded prompt.
TEST(TokenizerErrors, PostProcessorIdsMustBeTokensOfTheVocabulary) {
  nlohmann::json spec = test::synth_tokenizer_json();
  const auto with_template_id = [&](nlohmann::json id) {
    spec["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {id}}}}}}};
    return spec;
  };
  for (const nlohmann::json& bad : {nlohmann::json(-1), nlohmann::json(1 << 20), nlohmann::json("7")})
    expect_error(with_template_id(bad), {"post_processor", "special_tokens[\"<s>\"].ids", "not a token id"});
  const Tokenizer ok = Tokenizer::from_json(with_template_id(1));
  EXPECT_EQ(ok.encode("a").front(), 1);
}

// tokenizer.json is read with the checks of every other JSON file: a duplicate key (which nlohmann would collapse
// to the last one) and nesting deep enough to overflow the parser's recursion are refused, naming the file.
TEST(TokenizerErrors, FilesAreReadWithTheCommonJsonChecks) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("fp4serve-tokenizer-json-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string file = (dir / "tokenizer.json").string();
  auto load_text = [&](const std::string& text) {
    std::ofstream(file, std::ios::binary) << text;
    try {
      Tokenizer::from_files(dir);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(loaded without error)");
  };
  const std::string valid = test::synth_tokenizer_json().dump();
  EXPECT_EQ(load_text(valid), "(loaded without error)");
  const std::string duplicated = "{\"version\": \"1.0\", \"version\": \"1.0\"," + valid.substr(1);
  const std::string duplicate_error = load_text(duplicated);
  EXPECT_NE(duplicate_error.find(file), std::string::npos) << duplicate_error;
  EXPECT_NE(duplicate_error.find("duplicate key 'version'"), std::string::npos) << duplicate_error;
  const std::string deep_error = load_text(std::string(200000, '['));
  EXPECT_NE(deep_error.find(file), std::string::npos) << deep_error;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fp4serve
