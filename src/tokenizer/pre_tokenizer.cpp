// Pre-tokenizer steps (see pre_tokenizer.h). Each step maps the current list of pieces to a new list.
#include "tokenizer/pre_tokenizer.h"

#include "common/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/json_fields.h"

namespace fp4serve {

PreTokenizer PreTokenizer::from_json(const nlohmann::json& spec, std::string_view where) {
  PreTokenizer pre_tokenizer;
  if (!spec.is_null()) pre_tokenizer.add_step(spec, where);
  return pre_tokenizer;
}

void PreTokenizer::add_step(const nlohmann::json& spec, std::string_view where) {
  const std::string& type = component_type(spec, where);
  if (type == "Sequence") {
    const auto it = spec.find("pretokenizers");
    FP4_CHECK(it != spec.end() && it->is_array(), "{}: Sequence needs a \"pretokenizers\" array", where);
    for (size_t i = 0; i < it->size(); ++i) add_step((*it)[i], fmt::format("{}.pretokenizers[{}]", where, i));
  } else if (type == "Split") {
    Step step;
    step.kind = Step::Kind::kSplit;
    const auto pattern = spec.find("pattern");
    FP4_CHECK(pattern != spec.end() && pattern->is_object() && pattern->size() == 1,
              "{}: Split needs \"pattern\": {{\"Regex\": ...}} or {{\"String\": ...}}", where);
    const std::string pattern_kind = pattern->begin().key();
    FP4_CHECK(pattern_kind == "Regex" || pattern_kind == "String",
              "{}: Split pattern kind \"{}\" is not supported (Regex or String)", where, pattern_kind);
    const std::string& pattern_text = required_string(*pattern, pattern_kind, fmt::format("{}.pattern", where));
    step.regex = std::make_shared<const Regex>(pattern_text, pattern_kind == "String",
                                               fmt::format("{}.pattern.{}", where, pattern_kind));
    const std::string& behavior = required_string(spec, "behavior", where);
    FP4_CHECK(behavior == "Isolated" || behavior == "Removed",
              "{}: Split behavior \"{}\" is not supported (Isolated or Removed)", where, behavior);
    step.remove_matches = behavior == "Removed";
    step.invert = optional_bool(spec, "invert", false, where);
    steps_.push_back(std::move(step));
  } else if (type == "ByteLevel") {
    Step step;
    step.kind = Step::Kind::kByteLevel;
    step.add_prefix_space = optional_bool(spec, "add_prefix_space", true, where);
    if (optional_bool(spec, "use_regex", true, where)) {
      step.regex = std::make_shared<const Regex>(kGpt2SplitPattern, false, where);
    }
    steps_.push_back(std::move(step));
  } else {
    fail("{}: pre_tokenizer type \"{}\" is not supported (fp4serve reads Sequence, Split, ByteLevel)", where,
         type);
  }
}

bool PreTokenizer::is_byte_level() const {
  for (const Step& step : steps_) {
    if (step.kind == Step::Kind::kByteLevel) return true;
  }
  return false;
}

void PreTokenizer::split(std::string_view text, std::vector<std::string>& pieces) const {
  if (text.empty()) return;
  if (steps_.empty()) {
    pieces.emplace_back(text);
    return;
  }
  std::vector<std::string> current{std::string(text)};
  std::vector<std::string> next;
  for (size_t i = 0; i < steps_.size(); ++i) {
    std::vector<std::string>& out = i + 1 == steps_.size() ? pieces : next;
    for (const std::string& piece : current) {
      if (steps_[i].kind == Step::Kind::kSplit) {
        apply_split(steps_[i], piece, out);
      } else {
        apply_byte_level(steps_[i], piece, out);
      }
    }
    if (&out == &next) {
      current.swap(next);
      next.clear();
    }
  }
}

void PreTokenizer::apply_split(const Step& step, std::string_view piece, std::vector<std::string>& out) {
  thread_local std::vector<ByteSpan> matches;
  matches.clear();
  step.regex->find_all(piece, matches);
  // With invert the matches are the kept content and the gaps between them are the delimiters.
  const bool keep_matches = step.invert || !step.remove_matches;
  const bool keep_gaps = !step.invert || !step.remove_matches;
  size_t previous_end = 0;
  for (const ByteSpan& match : matches) {
    if (keep_gaps && match.begin > previous_end) out.emplace_back(piece.substr(previous_end, match.begin - previous_end));
    if (keep_matches) out.emplace_back(piece.substr(match.begin, match.end - match.begin));
    previous_end = match.end;
  }
  if (keep_gaps && previous_end < piece.size()) out.emplace_back(piece.substr(previous_end));
}

void PreTokenizer::apply_byte_level(const Step& step, std::string_view piece, std::vector<std::string>& out) {
  std::string prefixed;
  if (step.add_prefix_space && piece.front() != ' ') {
    prefixed = " " + std::string(piece);
    piece = prefixed;
  }
  auto emit = [&out](std::string_view bytes) {
    std::string mapped;
    mapped.reserve(bytes.size() * 2);
    append_byte_level(mapped, bytes);
    out.push_back(std::move(mapped));
  };
  if (!step.regex) {
    emit(piece);
    return;
  }
  thread_local std::vector<ByteSpan> matches;
  matches.clear();
  step.regex->find_all(piece, matches);
  size_t previous_end = 0;
  for (const ByteSpan& match : matches) {
    if (match.begin > previous_end) emit(piece.substr(previous_end, match.begin - previous_end));
    emit(piece.substr(match.begin, match.end - match.begin));
    previous_end = match.end;
  }
  if (previous_end < piece.size()) emit(piece.substr(previous_end));
}

}  // namespace fp4serve
