// Tokenizer throughput on a few MB of generated text: encode MB/s (cold word cache and warm, 1 and 4 threads),
// decode and streaming decode MB/s, and one long unbroken word to show merging stays O(n log n). Prints a table.
// The Qwen-style tokenizer has merges spelling out every dictionary word, so BPE does real work per word.
// `bench_tokenizer DIR [TEXT_FILE]` adds a real tokenizer (DIR/tokenizer.json, e.g. Qwen3's) on 10 MB, single
// thread: TEXT_FILE's first 10 MB, or generated prose / code / Chinese with a 30k-word Zipf lexicon, so the word
// cache misses as it does on real text.
#include "tokenizer/tokenizer.h"

#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tokenizer/byte_level.h"
#include "tokenizer/incremental_decoder.h"
#include "tokenizer/utf8.h"

namespace fp4serve {
namespace {

const std::vector<std::string> kWords = {"the",          "of",
                                         "and",          "to",
                                         "in",           "is",
                                         "that",         "for",
                                         "it",           "as",
                                         "was",          "with",
                                         "be",           "by",
                                         "on",           "not",
                                         "he",           "this",
                                         "are",          "or",
                                         "his",          "from",
                                         "at",           "which",
                                         "but",          "have",
                                         "an",           "had",
                                         "they",         "you",
                                         "were",         "their",
                                         "one",          "all",
                                         "we",           "can",
                                         "her",          "has",
                                         "there",        "been",
                                         "if",           "more",
                                         "when",         "will",
                                         "would",        "who",
                                         "so",           "model",
                                         "token",        "gradient",
                                         "reward",       "policy",
                                         "rollout",      "inference",
                                         "quantization", "attention",
                                         "expert",       "function",
                                         "return",       "value",
                                         "const",        "struct",
                                         "template",     "namespace",
                                         "vector",       "string",
                                         "Hello",        "World",
                                         "caf\u00e9",    "na\u00efve",
                                         "\u00fcber",    "\u4f60\u597d",
                                         "\u4e16\u754c", "\u0434\u0430\u043d\u043d\u044b\u0435",
                                         "\U0001F600",   "don't",
                                         "it's",         "we'll"};

std::string generate_text(size_t target_bytes, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string text;
  text.reserve(target_bytes + 64);
  while (text.size() < target_bytes) {
    const uint32_t r = rng() % 100;
    if (r < 80) {
      text += kWords[rng() % kWords.size()];
    } else if (r < 88) {
      text += std::to_string(rng() % 100000);
    } else if (r < 94) {
      text += ",.;:!?()"[rng() % 8];
    } else if (r < 97) {
      text += "\n";
    } else {
      text += "    ";
    }
    text += ' ';
  }
  return text;
}

constexpr size_t kCommonEnglishWords = 47;  // kWords starts with these, "the" .. "so"

// Pseudo-words from syllables, drawn log-uniformly by rank (a Zipf-like head and a long tail of rare words).
class Lexicon {
 public:
  Lexicon(size_t n_words, std::mt19937& rng) {
    static const std::vector<std::string> kSyllables = {
        "ka", "ri",   "to",   "men", "str", "ation", "ing", "pro", "con", "de",  "ex", "un", "re", "al", "er", "ous",
        "ly", "ment", "tion", "ver", "sub", "trans", "ph",  "qu",  "ble", "ize", "ed", "or", "an", "in", "is", "th"};
    while (words_.size() < n_words) {
      std::string word;
      const uint32_t syllables = 1 + rng() % 4;
      for (uint32_t i = 0; i < syllables; ++i) word += kSyllables[rng() % kSyllables.size()];
      words_.push_back(std::move(word));
    }
  }
  const std::string& draw(std::mt19937& rng) const {
    const double u = static_cast<double>(rng()) / 4294967296.0;
    return words_[static_cast<size_t>(std::pow(static_cast<double>(words_.size()), u)) - 1];
  }

 private:
  std::vector<std::string> words_;
};

// Paragraphs of prose (about 70%), indented code (20%) and Chinese (10%), with numbers and punctuation.
std::string generate_mixed_text(size_t target_bytes, uint32_t seed) {
  std::mt19937 rng(seed);
  const Lexicon lexicon(30000, rng);
  std::string text;
  text.reserve(target_bytes + 4096);
  while (text.size() < target_bytes) {
    const uint32_t kind = rng() % 10;
    if (kind < 7) {
      for (uint32_t sentence = 0, n = 1 + rng() % 6; sentence < n; ++sentence) {
        std::string first = rng() % 3 ? kWords[rng() % kCommonEnglishWords] : lexicon.draw(rng);
        first[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(first[0])));
        text += first;
        for (uint32_t w = 0, words = 4 + rng() % 20; w < words; ++w) {
          const uint32_t r = rng() % 20;
          text += r == 0 ? ", " : " ";
          text += r < 9    ? kWords[rng() % kCommonEnglishWords]
                  : r < 19 ? lexicon.draw(rng)
                           : std::to_string(rng() % 2030);
        }
        text += ". ";
      }
      text += "\n\n";
    } else if (kind < 9) {
      for (uint32_t line = 0, n = 2 + rng() % 10; line < n; ++line) {
        // One draw per statement: the order of evaluation within an expression is unspecified.
        text += std::string(2 * (rng() % 4), ' ');
        text += lexicon.draw(rng);
        text += "_";
        text += lexicon.draw(rng);
        text += " = ";
        text += lexicon.draw(rng);
        text += "(";
        text += std::to_string(rng() % 100);
        text += ", ";
        text += lexicon.draw(rng);
        text += ");\n";
      }
      text += "\n";
    } else {
      for (uint32_t c = 0, n = 20 + rng() % 80; c < n; ++c) {
        append_utf8(text, rng() % 12 == 0 ? U'\uFF0C' : static_cast<char32_t>(0x4E00 + rng() % 3500));
      }
      text += "\u3002\n\n";
    }
  }
  return text;
}

std::string spell(std::string_view bytes) {
  std::string out;
  append_byte_level(out, bytes);
  return out;
}

nlohmann::json qwen_style_json() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[spell(std::string(1, static_cast<char>(b)))] = b;
  nlohmann::json merges = nlohmann::json::array();
  auto add_word_merges = [&](const std::string& word) {
    // Left-to-right merges building the word byte by byte, like a trained vocab's chains.
    std::string prefix = spell(word.substr(0, 1));
    for (size_t i = 1; i < word.size(); ++i) {
      const std::string next = spell(word.substr(i, 1));
      if (!vocab.contains(prefix + next)) {
        merges.push_back(prefix + " " + next);
        vocab[prefix + next] = static_cast<int>(vocab.size());
      }
      prefix += next;
    }
  };
  for (const std::string& word : kWords) {
    add_word_merges(word);
    add_word_merges(" " + word);
  }
  return {
      {"added_tokens", {{{"id", static_cast<int>(vocab.size())}, {"content", "<|im_end|>"}, {"special", true}}}},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern",
            {{"Regex",
              R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
           {"behavior", "Isolated"}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
  };
}

nlohmann::json byte_level_json() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[spell(std::string(1, static_cast<char>(b)))] = b;
  return {{"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void print_row(const char* tokenizer, const char* operation, int threads, size_t bytes, size_t tokens, double seconds) {
  std::printf("| %-11s | %-28s | %7d | %7.2f | %9.1f | %10.2f |\n", tokenizer, operation, threads, bytes / 1e6,
              bytes / 1e6 / seconds, tokens / 1e6 / seconds);
}

void run(const char* name, const Tokenizer& tokenizer, const std::string& text) {
  auto start = std::chrono::steady_clock::now();
  std::vector<int32_t> ids = tokenizer.encode(text);
  print_row(name, "encode, cold word cache", 1, text.size(), ids.size(), seconds_since(start));

  start = std::chrono::steady_clock::now();
  ids = tokenizer.encode(text);
  print_row(name, "encode, warm word cache", 1, text.size(), ids.size(), seconds_since(start));

  // Four threads, each encoding its own quarter of the text in 4 KB requests.
  constexpr int kThreads = 4;
  constexpr size_t kRequestBytes = 4096;
  start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  std::vector<size_t> token_counts(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const size_t begin = text.size() * t / kThreads;
      const size_t end = text.size() * (t + 1) / kThreads;
      for (size_t pos = begin; pos < end; pos += kRequestBytes) {
        token_counts[t] +=
            tokenizer.encode(std::string_view(text).substr(pos, std::min(kRequestBytes, end - pos))).size();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  size_t total_tokens = 0;
  for (size_t count : token_counts) total_tokens += count;
  print_row(name, "encode, 4 KB requests", kThreads, text.size(), total_tokens, seconds_since(start));

  start = std::chrono::steady_clock::now();
  const std::string decoded = tokenizer.decode(ids);
  print_row(name, "decode", 1, decoded.size(), ids.size(), seconds_since(start));

  start = std::chrono::steady_clock::now();
  IncrementalDecoder stream(tokenizer);
  size_t streamed_bytes = 0;
  for (int32_t id : ids) streamed_bytes += stream.push(id).size();
  streamed_bytes += stream.finish().size();
  print_row(name, "streaming decode", 1, streamed_bytes, ids.size(), seconds_since(start));
}

// One thread, as a request handler encodes one prompt: encode with a cold and a warm word cache, decode, stream.
void run_single_thread(const char* name, const Tokenizer& tokenizer, const std::string& text) {
  auto start = std::chrono::steady_clock::now();
  std::vector<int32_t> ids = tokenizer.encode(text);
  print_row(name, "encode, cold word cache", 1, text.size(), ids.size(), seconds_since(start));

  start = std::chrono::steady_clock::now();
  ids = tokenizer.encode(text);
  print_row(name, "encode, warm word cache", 1, text.size(), ids.size(), seconds_since(start));

  start = std::chrono::steady_clock::now();
  const std::string decoded = tokenizer.decode(ids);
  print_row(name, "decode", 1, decoded.size(), ids.size(), seconds_since(start));

  start = std::chrono::steady_clock::now();
  IncrementalDecoder stream(tokenizer);
  size_t streamed_bytes = 0;
  for (int32_t id : ids) streamed_bytes += stream.push(id).size();
  streamed_bytes += stream.finish().size();
  print_row(name, "streaming decode", 1, streamed_bytes, ids.size(), seconds_since(start));
}

}  // namespace
}  // namespace fp4serve

int main(int argc, char** argv) {
  using namespace fp4serve;
  if (argc > 3) {
    std::fprintf(stderr, "usage: %s [TOKENIZER_DIR [TEXT_FILE]]\n", argv[0]);
    return 2;
  }
  const std::string text = generate_text(4 << 20, 2024);
  const Tokenizer qwen = Tokenizer::from_json(qwen_style_json());
  const Tokenizer byte_level = Tokenizer::from_json(byte_level_json());
  std::printf("| tokenizer   | operation                    | threads |      MB |      MB/s |  Mtokens/s |\n");
  std::printf("|-------------|------------------------------|---------|---------|-----------|------------|\n");
  run("qwen-style", qwen, text);
  run("byte-level", byte_level, text);

  // One 1 MB "word": a merge loop that rescanned the word per merge would take minutes here.
  std::string long_word;
  while (long_word.size() < (1 << 20)) long_word += "quantization";
  const auto start = std::chrono::steady_clock::now();
  const size_t tokens = qwen.encode(long_word).size();
  print_row("qwen-style", "encode, one 1 MB word", 1, long_word.size(), tokens, seconds_since(start));

  if (argc >= 2) {
    constexpr size_t kRealTextBytes = 10 << 20;
    std::string real_text;
    if (argc == 3) {
      std::ifstream file(argv[2], std::ios::binary);
      if (!file) {
        std::fprintf(stderr, "cannot open %s\n", argv[2]);
        return 1;
      }
      real_text.resize(kRealTextBytes);
      file.read(real_text.data(), static_cast<std::streamsize>(kRealTextBytes));
      real_text.resize(static_cast<size_t>(file.gcount()));
    } else {
      real_text = generate_mixed_text(kRealTextBytes, 7);
    }
    const auto load_start = std::chrono::steady_clock::now();
    const Tokenizer real = Tokenizer::from_files(argv[1]);
    std::printf("\n%s loaded in %.2f s; text: %s, %.2f MB\n", argv[1], seconds_since(load_start),
                argc == 3 ? argv[2] : "generated mix", real_text.size() / 1e6);
    run_single_thread("real", real, real_text);
  }
  return 0;
}
