// Corpus content (see corpus.h). Random strings are built from "atoms" drawn from classes of characters where
// tokenizers tend to disagree: whitespace runs before letters, contractions in any case, digits, combining marks
// (NFC), Hangul jamo, emoji sequences, special-token text and its fragments, C0/C1 controls.
#include "tests/tokenizer_oracle/corpus.h"

#include <unicode/uchar.h>

#include <cstdint>
#include <random>
#include <string_view>

#include "tokenizer/utf8.h"

namespace fp4serve::test {
namespace {

std::string repeat(std::string_view piece, size_t times) {
  std::string out;
  for (size_t i = 0; i < times; ++i) out += piece;
  return out;
}

const std::vector<std::pair<const char*, std::vector<std::string>>>& hand_written() {
  static const std::vector<std::pair<const char*, std::vector<std::string>>> texts = {
      {"english",
       {"Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
        "I'm sure you'll see they've done what we'd said: it's John's.", "DON'T SHOUT, I'M HERE. WE'LL SEE. IT'S",
        "mixed 'S 'T 'Re 'vE 'M 'Ll 'D and '' and 'x", "IT'\u017F long s: '\u017Fa '\u017F",
        "quotes: \"double\" 'single' `back`", "e-mail: a.b@example.com", "https://example.com/path?query=1&x=y#frag",
        "Mr. Smith-Jones (aged 42) -- left...", "CamelCaseWordsAndALLCAPS", "a", " a", "  a", "a ", "The end.\n"}},
      {"code",
       {"int main() {\n  return 0;\n}\n", "def f(x):\n    return x ** 2  # square\n",
        "for (size_t i = 0; i < n; ++i) { sum += a[i] * b[i]; }", "\tif (x) {\n\t\ty = x->next;\n\t}\n",
        "{\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\"}}", "ls -la | grep -v '^d' && echo $HOME",
        "#include <vector>\r\nstd::vector<int> v{1,2,3};\r\n", "x=a+b*c/d-e%f^g|h&i~j", "    indented\n        more\n",
        "SELECT * FROM t WHERE id = 1;", "<div class=\"x\">&amp;</div>", "a_b __init__ self.__dict__",
        "```python\nprint('hi')\n```"}},
      {"chinese",
       {"你好，世界！", "我们今天学习自然语言处理。", "中文English混合text测试123", "「引号」『书名』（括号）《标题》",
        "繁體中文測試", "日本語のテキストとカタカナ", "한국어 텍스트 테스트", "一二三四五六七八九十",
        "你好 世界\n你好\t世界"}},
      {"emoji",
       {"\U0001F600", "smile \U0001F600\U0001F601\U0001F602",
        "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466", "\U0001F44D\U0001F3FD thumbs",
        "\U0001F1FA\U0001F1F8\U0001F1EF\U0001F1F5 flags", "1\uFE0F\u20E3 keycap", "\u2764\uFE0F love",
        "\U0001F9D1\u200D\U0001F4BB coder", "emoji\U0001F680at\U0001F680end", "\u263A\u263B\u2600"}},
      {"whitespace",
       {"",
        " ",
        "  ",
        "   ",
        "\n",
        "\n\n",
        "\n\n\n",
        " \n",
        "\n ",
        " \n ",
        "\t",
        "\t\t",
        " \t \t",
        "a  b",
        "a   b",
        "a\n\nb",
        "a \n b",
        "trailing   ",
        "   leading",
        "\r\n",
        "\r\n\r\n",
        "\r",
        "a\rb",
        "\v\f",
        "x\u00A0y",
        "x \u00A0 y",
        "\u3000\u3000中文",
        "a\u2028b\u2029c",
        "a\u2003\u2009b",
        "a\u200Bb",
        "\u1680x",
        "a\u180Eb \u180E\u180E x\u180E ",
        "a\u202F\u205Fb"}},
      {"numbers",
       {"0",
        "12345",
        "1234567890123",
        "3.14159",
        "1,000,000",
        "-42",
        "+7",
        "1e10",
        "0x1F",
        "2024-11-23",
        "12:34:56",
        "v1.2.3",
        "99%",
        "$100.00",
        "\u0663\u0664\u0665",
        "\u2167 \u216B",
        "\u00BD \u00BE \u00B2",
        "\uFF11\uFF12\uFF13",
        "\u0967\u0968",
        "a1b2c3"}},
      {"special_tokens",
       {"<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|im_start|>user\nhi<|im_end|>\n",
        "<|im_start|>assistant\n<think>\nhmm\n</think>\n\nok<|im_end|>",
        "<|im_start|><|im_start|><|im_end|>",
        " <|im_end|> ",
        "x<|endoftext|>y",
        "<|im_start",
        "im_start|>",
        "<|im_start|",
        "<|<|im_end|>|>",
        "<|",
        "<tool_call>{\"a\":1}</tool_call>",
        "<tool_response>r</tool_response>",
        "<|vision_start|><|image_pad|>",
        "<|fim_prefix|>a<|fim_middle|>b<|fim_suffix|>",
        "<think></think>",
        "</think>x<think>",
        "<|IM_START|>"}},
      {"nfc",
       {"e\u0301", "cafe\u0301", "\u00E9", "A\u030A", "\u212B", "\u2126", "\u1100\u1161\u11A8", "\u0041\u0308\u0304",
        "\u1E0B\u0323", "o\u0302\u0323", "\u0915\u093C", "\uFB01", "\u0301start", "a\u0301\u0301\u0301"}},
      {"scripts",
       {"Привет, мир!", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Xin chào thế giới",
        "Ça va? Über naïve façade", "ẞ ß ǅ ǈ", "\U0001D400\U0001D401 math"}},
      {"long",
       {repeat(" ", 100), repeat("\n", 50), repeat(" \n", 20), "end " + repeat(" ", 37) + "word", repeat("a", 5000),
        repeat("ab", 300), repeat("hello ", 400), repeat("1", 1000), repeat("你好", 500), repeat("\U0001F600", 300),
        repeat("-", 700), "x" + repeat("y", 299), repeat("antidisestablishment", 40)}},
      {"controls", {std::string("a\0b", 3), "\x01\x02\x1F", "\x7F", "a\u0080b\u009Fc", "\x1B[31mred\x1B[0m"}},
  };
  return texts;
}

// Ill-formed UTF-8: stray continuation bytes, truncated sequences, overlongs, surrogates, beyond U+10FFFF.
std::vector<std::string> invalid_utf8_texts() {
  std::vector<std::string> texts = {
      "\xFF",
      "abc\xFE",
      "\xC3",
      "\xC3(",
      "\xE4\xBD",
      "\xE4\xBD"
      "a",
      "\xC0\xAF",
      "\xE0\x80\xAF",
      "\xED\xA0\x80",
      "\xED\xBF\xBF",
      "\xF4\x90\x80\x80",
      "\xF5\x80",
      "\x80\x80\x80",
      "\xF0\x9F\x98",
      "\xF0\x9F\x98 smile",
      "你\xFF好",
      "a\xC3\xA9\xC3",
  };
  std::mt19937 rng(5);
  for (int i = 0; i < 200; ++i) {
    std::string bytes;
    const uint32_t length = 1 + rng() % 24;
    for (uint32_t j = 0; j < length; ++j) {
      // Mostly ASCII and lead/continuation bytes, so partial characters appear often.
      const uint32_t r = rng() % 4;
      bytes += static_cast<char>(r == 0 ? 0x20 + rng() % 0x5F : r == 1 ? 0x80 + rng() % 0x40 : 0xC0 + rng() % 0x40);
    }
    if (to_valid_utf8(bytes) != bytes) texts.push_back(bytes);
  }
  return texts;
}

// Whether the JS oracle and HF agree on how the pre-tokenizer regex classifies `c`, so that JS's ids are HF's:
// not a surrogate; assigned by Unicode 14 (PCRE2 10.42's tables; engines on later versions class newer letters
// and digits differently); and not U+0085 or U+FEFF, where JS's \s differs from Oniguruma's (see corpus.h).
bool comparable_with_js(char32_t c) {
  if (c >= 0xD800 && c <= 0xDFFF) return false;
  if (c == 0x85 || c == 0xFEFF) return false;
  UVersionInfo age;
  u_charAge(static_cast<UChar32>(c), age);
  return age[0] >= 1 && age[0] <= 14;
}

// Draws one atom. Every draw is its own statement: the order of evaluation of operands is unspecified in C++,
// and the corpus must not depend on the compiler.
std::string random_atom(std::mt19937& rng) {
  static const std::vector<std::string> kWords = {"the",         "The",
                                                  "hello",       "world",
                                                  "don",         "'s",
                                                  "'S",          "'t",
                                                  "'re",         "'RE",
                                                  "'ve",         "'m",
                                                  "'ll",         "'LL",
                                                  "'d",          "'",
                                                  "I",           "x",
                                                  "foo_bar",     "return",
                                                  "tokenizer",   "=",
                                                  "==",          "->",
                                                  "::",          "()",
                                                  "{}",          "[",
                                                  "]",           ";",
                                                  ",",           ".",
                                                  "...",         "<|im_start|>",
                                                  "<|im_end|>",  "<|endoftext|>",
                                                  "<think>",     "</think>",
                                                  "<tool_call>", "<|im_start",
                                                  "|>",          "<|",
                                                  "</",          "user",
                                                  "assistant",   "\u00E9t\u00E9",
                                                  "na\u00EFve"};
  static const std::vector<std::string> kSpaces = {
      " ",  "  ",     "   ",    "\t",     "\n",     "\n\n",   "\r\n",   "\r",     " \n",    "\n ",    "\v",
      "\f", "\u00A0", "\u3000", "\u2003", "\u2028", "\u2029", "\u200B", "\u202F", "\u1680", "\u2009", "\u205F"};
  // Ranges of code points, each a class of its own; some atoms append a second character (see below).
  struct Range {
    char32_t first, last;
  };
  static const std::vector<Range> kLetters = {
      {0xC0, 0x24F},                           // Latin-1 and Latin Extended letters
      {0x370, 0x4FF},                          // Greek, Cyrillic
      {0x4E00, 0x9FFF},                        // CJK
      {0x3040, 0x30FF},                        // kana
      {0x3000, 0x303F},                        // CJK punctuation
      {0xFF01, 0xFF65},                        // full-width forms
      {0xAC00, 0xD7A3},                        // Hangul syllables
      {0x620, 0x64A},                          // Arabic
      {0x5D0, 0x5EA},                          // Hebrew
      {0x905, 0x94D},                          // Devanagari
      {0xE01, 0xE3A},                          // Thai
      {0x2010, 0x2BFF},                        // punctuation, symbols, arrows, math, currency, number forms
      {0x0, 0x1F},                             // C0 controls
      {0x7F, 0x9F},                            // DEL and C1 controls
      {0x1F300, 0x1F64F}, {0x1F680, 0x1F6C5},  // emoji
      {0x20000, 0x2A6DF},                      // CJK extension B
      {0x1D400, 0x1D6A5},                      // mathematical alphanumerics
  };
  std::string atom;
  const auto append = [&](char32_t first, char32_t last) {
    char32_t c = first + rng() % (last - first + 1);
    while (!comparable_with_js(c)) c = first + rng() % (last - first + 1);
    append_utf8(atom, c);
  };
  switch (rng() % 10) {
    case 0:
      atom += static_cast<char>(0x20 + rng() % 0x5F);  // printable ASCII
      break;
    case 1:
    case 2:
      atom = kWords[rng() % kWords.size()];
      break;
    case 3:
      atom = kSpaces[rng() % kSpaces.size()];
      break;
    case 4:
      atom = std::to_string(rng() % 100000);
      break;
    case 5: {
      const Range& range = kLetters[rng() % kLetters.size()];
      append(range.first, range.last);
      break;
    }
    case 6:  // a letter and combining marks, which NFC composes or reorders
      if (rng() % 2) {
        append('a', 'z');
      } else {
        append(0xC0, 0x24F);
      }
      append(0x300, 0x36F);
      if (rng() % 2) append(0x300, 0x36F);
      break;
    case 7:  // conjoining jamo, which NFC composes into Hangul syllables
      append(0x1100, 0x1112);
      append(0x1161, 0x1175);
      if (rng() % 2) append(0x11A8, 0x11C2);
      break;
    case 8:  // emoji sequences: skin tone, ZWJ, variation selector, regional-indicator pair
      append(0x1F466, 0x1F469);
      switch (rng() % 3) {
        case 0:
          append(0x1F3FB, 0x1F3FF);
          break;
        case 1:
          atom += "\u200D";
          append(0x1F466, 0x1F469);
          atom += "\uFE0F";
          break;
        default:
          append(0x1F1E6, 0x1F1FF);
          append(0x1F1E6, 0x1F1FF);
          break;
      }
      break;
    default:  // any BMP scalar value, so classes the lists above miss still appear (surrogates are not)
      append(0, 0xFFFF);
      break;
  }
  return atom;
}

}  // namespace

std::vector<CorpusText> build_corpus_texts() {
  std::vector<CorpusText> texts;
  for (const auto& [category, list] : hand_written()) {
    for (const std::string& text : list) texts.push_back({category, text});
  }
  for (std::string& bytes : invalid_utf8_texts()) texts.push_back({"invalid_utf8", std::move(bytes)});
  std::mt19937 rng(20261123);
  for (size_t i = 0; i < kRandomTexts; ++i) {
    std::string text;
    const uint32_t atoms = 1 + rng() % 16;
    for (uint32_t a = 0; a < atoms; ++a) text += random_atom(rng);
    texts.push_back({"random", std::move(text)});
  }
  return texts;
}

std::vector<CorpusChat> build_corpus_chats() {
  using M = ChatMessage;
  std::vector<CorpusChat> chats = {
      {{M{"user", "Hello"}}, true, std::nullopt},
      {{M{"user", "Hello"}}, true, true},
      {{M{"user", "Hello"}}, true, false},
      {{M{"user", "Hello"}}, false, std::nullopt},
      {{M{"system", "You are helpful."}, M{"user", "What is 2+2?"}}, true, false},
      {{M{"system", "sys"}, M{"user", "q1"}, M{"assistant", "<think>\nfirst\n</think>\n\na1"}, M{"user", "q2"}},
       true,
       std::nullopt},
      {{M{"user", "q1"}, M{"assistant", "<think>\nreasoning\n</think>\n\nanswer"}}, false, std::nullopt},
      {{M{"user", "q1"}, M{"assistant", "plain answer"}}, false, std::nullopt},
      {{M{"user", "q1"}, M{"assistant", "answer", "kept apart"}}, false, std::nullopt},
      {{M{"user", "q1"}, M{"assistant", "a1", "r1"}, M{"user", "q2"}, M{"assistant", "a2", "r2"}}, true, false},
      {{M{"user", "q"}, M{"assistant", "\n\n<think>\n\nr\n\n</think>\n\n\nanswer\n"}}, false, std::nullopt},
      {{M{"user", "q"}, M{"assistant", "x</think>y</think>z"}}, false, std::nullopt},
      {{M{"user", "q"}, M{"assistant", "<think>a<think>b</think>c"}}, false, std::nullopt},
      {{M{"user", "q"}, M{"assistant", "step", "r"}, M{"assistant", "more"}, M{"assistant", "last"}},
       false,
       std::nullopt},
      {{M{"user", "q"}, M{"user", "<tool_response>\nok\n</tool_response>"}, M{"assistant", "<think>t</think>a"}},
       false,
       std::nullopt},
      {{M{"system", "s1"}, M{"user", "q"}, M{"system", "s2"}, M{"user", "q2"}}, true, std::nullopt},
      {{M{"user", ""}, M{"assistant", ""}}, true, std::nullopt},
      {{M{"user", "你好 \U0001F600 <|im_end|> text"}, M{"assistant", "<think>\n思考\n</think>\n\n回答"}}, false, false},
  };
  // Random conversations from fragments that exercise the think-block stripping and the last-query rule. No
  // fragment ends in whitespace other than "\n": @huggingface/jinja's strip('\n') strips all whitespace, unlike
  // Python's (tests/tokenizer pins Python's behaviour there).
  static const std::vector<std::string> kFragments = {"hi",
                                                      "an answer",
                                                      "\n",
                                                      "\n\n",
                                                      "<think>",
                                                      "</think>",
                                                      "<think>\n",
                                                      "\n</think>\n\n",
                                                      "reason",
                                                      "<tool_response>",
                                                      "</tool_response>",
                                                      "\u4F60\u597D",
                                                      "\U0001F600",
                                                      "<|im_end|>"};
  static const std::vector<std::string> kRoles = {"system", "user", "assistant", "assistant"};
  std::mt19937 rng(77);
  for (int c = 0; c < 300; ++c) {
    CorpusChat chat;
    const uint32_t n = 1 + rng() % 6;
    for (uint32_t m = 0; m < n; ++m) {
      ChatMessage message{kRoles[rng() % kRoles.size()], ""};
      const uint32_t pieces = rng() % 6;
      for (uint32_t p = 0; p < pieces; ++p) message.content += kFragments[rng() % kFragments.size()];
      if (message.role == "assistant" && rng() % 4 == 0) message.reasoning_content = kFragments[rng() % 6];
      chat.messages.push_back(std::move(message));
    }
    chat.add_generation_prompt = rng() % 2 == 0;
    const uint32_t thinking = rng() % 3;
    if (thinking < 2) chat.enable_thinking = thinking == 0;
    chats.push_back(std::move(chat));
  }
  return chats;
}

}  // namespace fp4serve::test
