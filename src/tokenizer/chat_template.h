// Chat rendering for the ChatML family, done natively (Debian packages no Jinja engine for C++): the template's
// Jinja source is only inspected to recognise a variant we reproduce exactly (plain ChatML, or Qwen3 with its
// enable_thinking switch and reasoning stripping); anything else is refused rather than rendered wrongly.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fp4serve {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
  std::optional<std::string> reasoning_content =
      std::nullopt;  // an assistant turn's reasoning, when kept apart from content
};

class ChatTemplate {
 public:
  enum class Variant {
    kChatMl,  // <|im_start|>{role}\n{content}<|im_end|>\n per message
    kQwen3,   // ChatML + earlier turns' <think> stripped + enable_thinking's empty think block
  };

  // Recognises the Jinja `source`; throws "chat template not supported: ..." for anything else.
  static ChatTemplate from_jinja(std::string_view source);
  // tokenizer_config.json's "chat_template" (a string, or a list of {name, template} where "default" is used).
  static ChatTemplate from_tokenizer_config(const nlohmann::json& tokenizer_config);
  // DIR/tokenizer_config.json's chat_template, else DIR/chat_template.jinja.
  static ChatTemplate from_model_dir(const std::filesystem::path& model_dir);

  Variant variant() const { return variant_; }

  // The prompt text (special tokens spelled out: encode it with allow_special). Throws on a role other than
  // system / user / assistant (tool calls are not supported yet). enable_thinking only changes the Qwen3 variant.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     bool enable_thinking = true) const;

 private:
  explicit ChatTemplate(Variant variant) : variant_(variant) {}
  std::string render_qwen3(const std::vector<ChatMessage>& messages) const;

  Variant variant_;
};

}  // namespace fp4serve
