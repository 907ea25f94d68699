// tokenizer.json fixtures built in code: the synth model's byte-level tokenizer, a hand-made BPE whose ids are
// derived by hand in the tests, and a Qwen-style one (NFC, Split + ByteLevel, a few merges) whose expected ids
// come from reference_ids.py. The byte alphabet here is written from the GPT-2 definition, independently of
// src/tokenizer/byte_level.cpp.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace fp4serve::test {

// GPT-2 bytes_to_unicode, spelled out: printable bytes keep their code point, the rest take 256, 257, ...
inline std::string byte_char(int byte) {
  int code_point = byte;
  const auto printable = [](int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174; };
  if (!printable(byte)) {
    code_point = 256;
    for (int b = 0; b < byte; ++b) code_point += printable(b) ? 0 : 1;
  }
  std::string out;
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
  return out;
}

inline nlohmann::json byte_vocab() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  return vocab;
}

inline nlohmann::json added_token(int id, const std::string& content, bool special, bool normalized = false) {
  return {{"id", id},        {"content", content},       {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", normalized}, {"special", special}};
}

// Exactly what `fp4serve synth` writes.
inline nlohmann::json synth_tokenizer_json() {
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens",
       {added_token(256, "<|endoftext|>", true), added_token(257, "<|im_start|>", true),
        added_token(258, "<|im_end|>", true)}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"vocab", byte_vocab()},
        {"merges", nlohmann::json::array()}}},
  };
}

// Characters a b c d plus merges (by rank): b c, a b, a bc, c d, [a, a]. Words are split on " " (removed).
inline nlohmann::json hand_bpe_json() {
  return {
      {"added_tokens", nlohmann::json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Removed"}, {"invert", false}}},
      {"decoder", nullptr},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "[UNK]"},
        {"fuse_unk", false},
        {"ignore_merges", false},
        {"vocab",
         {{"a", 0},
          {"b", 1},
          {"c", 2},
          {"d", 3},
          {"ab", 4},
          {"bc", 5},
          {"abc", 6},
          {"cd", 7},
          {"[UNK]", 8},
          {"aa", 9},
          {"dab", 10}}},
        {"merges", {"b c", "a b", "a bc", "c d", {"a", "a"}}}}},
  };
}

inline const char* kQwen2SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The merges of the Qwen-style fixture, in rank order; merged token i gets id 256 + i.
inline std::vector<std::pair<std::string, std::string>> qwen_style_merges() {
  const std::string space = byte_char(' ');
  const std::string newline = byte_char('\n');
  return {{space, "t"},
          {"h", "e"},
          {space + "t", "he"},
          {"i", "n"},
          {space, space},
          {newline, newline},
          {"\xC3\x83", "\xC2\xA9"} /* bytes C3 A9: "é" */,
          {"'", "s"},
          {space, "w"},
          {"o", "r"},
          {space + "w", "or"},
          {"l", "d"},
          {space + "wor", "ld"}};
}

inline nlohmann::json qwen_style_tokenizer_json() {
  nlohmann::json vocab = byte_vocab();
  nlohmann::json merges = nlohmann::json::array();
  int next_id = 256;
  for (const auto& [left, right] : qwen_style_merges()) {
    vocab[left + right] = next_id++;
    merges.push_back(nlohmann::json::array({left, right}));
  }
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens",
       {added_token(300, "<|endoftext|>", true), added_token(301, "<|im_start|>", true),
        added_token(302, "<|im_end|>", true), added_token(303, "<think>", false), added_token(304, "</think>", false)}},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", kQwen2SplitPattern}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}},
  };
}

}  // namespace fp4serve::test
