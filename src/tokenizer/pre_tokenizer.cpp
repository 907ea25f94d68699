// Pre-tokenizer steps (see pre_tokenizer.h). Each step maps the current list of pieces to a new list.
#include "tokenizer/pre_tokenizer.h"

#include <deque>

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
    fail("{}: pre_tokenizer type \"{}\" is not supported (fp4serve reads Sequence, Split, ByteLevel)", where, type);
  }
}

void PreTokenizer::split(std::string_view text, const PieceSink& on_piece) const {
  if (!text.empty()) apply(0, text, on_piece);
}

void PreTokenizer::apply(size_t step, std::string_view piece, const PieceSink& on_piece) const {
  if (step == steps_.size()) {
    on_piece(piece);
  } else if (steps_[step].kind == Step::Kind::kSplit) {
    apply_split(step, piece, on_piece);
  } else {
    apply_byte_level(step, piece, on_piece);
  }
}

void PreTokenizer::apply_split(size_t step, std::string_view piece, const PieceSink& on_piece) const {
  const Step& split = steps_[step];
  // With invert the matches are the kept content and the gaps between them are the delimiters.
  const bool keep_matches = split.invert || !split.remove_matches;
  const bool keep_gaps = !split.invert || !split.remove_matches;
  size_t previous_end = 0;
  while (const std::optional<ByteSpan> match = split.regex->find(piece, previous_end)) {
    if (keep_gaps && match->begin > previous_end) {
      apply(step + 1, piece.substr(previous_end, match->begin - previous_end), on_piece);
    }
    if (keep_matches) apply(step + 1, piece.substr(match->begin, match->end - match->begin), on_piece);
    previous_end = match->end;
  }
  if (keep_gaps && previous_end < piece.size()) apply(step + 1, piece.substr(previous_end), on_piece);
}

void PreTokenizer::apply_byte_level(size_t step, std::string_view piece, const PieceSink& on_piece) const {
  const Step& byte_level = steps_[step];
  std::string prefixed;
  if (byte_level.add_prefix_space && piece.front() != ' ') {
    prefixed = " " + std::string(piece);
    piece = prefixed;
  }
  // One buffer per step, reused: a step is done with its buffer before its next piece. A deque keeps the
  // buffers of outer steps in place while a deeper step grows it.
  thread_local std::deque<std::string> buffers;
  if (buffers.size() <= step) buffers.resize(step + 1);
  auto emit = [&](std::string_view bytes) {
    std::string& mapped = buffers[step];
    mapped.clear();
    append_byte_level(mapped, bytes);
    apply(step + 1, mapped, on_piece);
  };
  if (!byte_level.regex) {
    emit(piece);
    return;
  }
  size_t previous_end = 0;
  while (const std::optional<ByteSpan> match = byte_level.regex->find(piece, previous_end)) {
    if (match->begin > previous_end) emit(piece.substr(previous_end, match->begin - previous_end));
    emit(piece.substr(match->begin, match->end - match->begin));
    previous_end = match->end;
  }
  if (previous_end < piece.size()) emit(piece.substr(previous_end));
}

}  // namespace fp4serve
