// Variant detection works on a compacted template: whitespace outside string literals and Jinja's "-" trim
// markers removed, "..." literals rewritten as '...', message['x'] as message.x. Plain ChatML must match the
// canonical template exactly; Qwen3 must contain each of its rendering rules verbatim and end with its
// generation prompt. Known ways a ChatML-looking template differs (default system prompt, a forced <think>,
// bos_token, extra switches) are refused with the reason.
#include "tokenizer/chat_template.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "tokenizer/regex.h"

namespace fp4serve {
namespace {

constexpr std::string_view kSupported = "fp4serve renders plain ChatML and Qwen3 chat templates natively";

std::string compact_jinja(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    const char c = source[i];
    if (c == '\'' || c == '"') {
      size_t end = i + 1;
      while (end < source.size() && source[end] != c) end += source[end] == '\\' ? 2 : 1;
      std::string_view body = source.substr(i + 1, std::min(end, source.size()) - i - 1);
      const char quote = body.find('\'') == std::string_view::npos ? '\'' : c;
      out += quote;
      out += body;
      out += quote;
      i = end;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    out += c;
  }
  const std::array<std::pair<std::string_view, std::string_view>, 6> rewrites{
      {{"{%-", "{%"},
       {"-%}", "%}"},
       {"{{-", "{{"},
       {"-}}", "}}"},
       {"message['role']", "message.role"},
       {"message['content']", "message.content"}}};
  for (const auto& [from, to] : rewrites) {
    for (size_t pos = out.find(from); pos != std::string::npos; pos = out.find(from, pos + to.size())) {
      out.replace(pos, from.size(), to);
    }
  }
  return out;
}

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

// Names tested with "is defined" other than enable_thinking are switches we do not reproduce.
void refuse_unknown_switches(std::string_view source) {
  static const Regex defined_test(R"([A-Za-z_][\w.]*(?=\s+is\s+(?:not\s+)?defined))", false, "chat template");
  for (auto match = defined_test.find(source, 0); match; match = defined_test.find(source, match->end)) {
    const std::string_view name = source.substr(match->begin, match->end - match->begin);
    FP4_CHECK(name == "enable_thinking" || name.starts_with("message."),
              "chat template not supported: it has a switch \"{}\" that fp4serve does not reproduce; {}", name,
              kSupported);
  }
}

// Each rule of Qwen3's template that decides the rendered text, compacted, met by either of its spellings: the
// first Qwen3 release reads message.content directly, later ones a `content` copy that is '' unless a string
// (the same text for our string contents). An empty second spelling means the rule has one.
constexpr std::array<std::array<std::string_view, 2>, 6> kQwen3Rules{{
    {"{%ifmessages[0].role=='system'%}{{'<|im_start|>system\\n'+messages[0].content+'<|im_end|>\\n'}}{%endif%}", ""},
    {"not(message.content.startswith('<tool_response>')andmessage.content.endswith('</tool_response>'))", ""},
    {"{%if(message.role=='user')or(message.role=='system'andnotloop.first)%}"
     "{{'<|im_start|>'+message.role+'\\n'+content+'<|im_end|>'+'\\n'}}",
     "{%if(message.role=='user')or(message.role=='system'andnotloop.first)%}"
     "{{'<|im_start|>'+message.role+'\\n'+message.content+'<|im_end|>'+'\\n'}}"},
    {"{%setreasoning_content=content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n')%}"
     "{%setcontent=content.split('</think>')[-1].lstrip('\\n')%}",
     "{%setcontent=message.content.split('</think>')[-1].lstrip('\\n')%}{%setreasoning_content=message.content."
     "split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n')%}"},
    {"{%ifloop.index0>ns.last_query_index%}{%ifloop.lastor(notloop.lastandreasoning_content)%}"
     "{{'<|im_start|>'+message.role+'\\n<think>\\n'+reasoning_content.strip('\\n')+'\\n</think>\\n\\n'+"
     "content.lstrip('\\n')}}{%else%}{{'<|im_start|>'+message.role+'\\n'+content}}{%endif%}{%else%}"
     "{{'<|im_start|>'+message.role+'\\n'+content}}{%endif%}",
     ""},
    {"{{'<|im_end|>\\n'}}{%elifmessage.role=='tool'%}", ""},
}};
constexpr std::string_view kQwen3GenerationPrompt =
    "{%ifadd_generation_prompt%}{{'<|im_start|>assistant\\n'}}"
    "{%ifenable_thinkingisdefinedandenable_thinkingisfalse%}{{'<think>\\n\\n</think>\\n\\n'}}{%endif%}{%endif%}";

constexpr std::array<std::string_view, 2> kChatMlTemplates{
    "{%formessageinmessages%}{{'<|im_start|>'+message.role+'\\n'+message.content+'<|im_end|>'+'\\n'}}{%endfor%}"
    "{%ifadd_generation_prompt%}{{'<|im_start|>assistant\\n'}}{%endif%}",
    "{%formessageinmessages%}{{'<|im_start|>'+message.role+'\\n'+message.content+'<|im_end|>\\n'}}{%endfor%}"
    "{%ifadd_generation_prompt%}{{'<|im_start|>assistant\\n'}}{%endif%}",
};

std::string strip_newlines(std::string_view text, bool left, bool right) {
  size_t begin = 0;
  size_t end = text.size();
  while (left && begin < end && text[begin] == '\n') ++begin;
  while (right && end > begin && text[end - 1] == '\n') --end;
  return std::string(text.substr(begin, end - begin));
}

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  FP4_CHECK(file.good(), "cannot open {}", path.string());
  std::stringstream buffer;
  buffer << file.rdbuf();
  return buffer.str();
}

}  // namespace

ChatTemplate ChatTemplate::from_jinja(std::string_view source) {
  FP4_CHECK(contains(source, "<|im_start|>") && contains(source, "<|im_end|>"),
            "chat template not supported: it is not ChatML (no <|im_start|> / <|im_end|> markers); {}", kSupported);
  const std::string compact = compact_jinja(source);
  FP4_CHECK(!contains(compact, "bos_token"), "chat template not supported: it emits bos_token; {}", kSupported);
  for (size_t pos = compact.find("'<|im_start|>system\\n"); pos != std::string::npos;
       pos = compact.find("'<|im_start|>system\\n", pos + 1)) {
    const size_t after = pos + std::string_view("'<|im_start|>system\\n").size();
    FP4_CHECK(after < compact.size() && compact[after] == '\'',
              "chat template not supported: it injects a default system prompt; {}", kSupported);
  }
  FP4_CHECK(!contains(compact, "assistant\\n<think>") && !contains(compact, "'<think>\\n'"),
            "chat template not supported: its generation prompt opens a <think> block; {}", kSupported);
  refuse_unknown_switches(source);

  for (std::string_view chatml : kChatMlTemplates) {
    if (compact == chatml) return ChatTemplate(Variant::kChatMl);
  }
  if (contains(compact, "enable_thinking") || contains(compact, "<think>")) {
    for (const auto& [rule, other_spelling] : kQwen3Rules) {
      FP4_CHECK(contains(compact, rule) || (!other_spelling.empty() && contains(compact, other_spelling)),
                "chat template not supported: it handles <think> but differs from Qwen3's template (missing rule "
                "{}); {}",
                rule, kSupported);
    }
    FP4_CHECK(compact.ends_with(kQwen3GenerationPrompt),
              "chat template not supported: its generation prompt differs from Qwen3's; {}", kSupported);
    return ChatTemplate(Variant::kQwen3);
  }
  fail("chat template not supported: a ChatML template with logic fp4serve does not recognise; {}", kSupported);
}

ChatTemplate ChatTemplate::from_tokenizer_config(const nlohmann::json& tokenizer_config) {
  FP4_CHECK(tokenizer_config.is_object(), "tokenizer_config.json: expected a JSON object");
  const auto it = tokenizer_config.find("chat_template");
  FP4_CHECK(it != tokenizer_config.end() && !it->is_null(), "tokenizer_config.json has no \"chat_template\"");
  if (it->is_string()) return from_jinja(it->get_ref<const std::string&>());
  FP4_CHECK(it->is_array(),
            "tokenizer_config.json: \"chat_template\" must be a string or a list of {{name, template}}");
  std::vector<std::string> names;
  for (const nlohmann::json& entry : *it) {
    FP4_CHECK(entry.is_object(), "tokenizer_config.json: \"chat_template\" entry {} is not {{name, template}}",
              entry.dump());
    const std::string name =
        entry.contains("name") && entry["name"].is_string() ? entry["name"].get<std::string>() : "";
    if (name == "default" && entry.contains("template") && entry["template"].is_string()) {
      return from_jinja(entry["template"].get_ref<const std::string&>());
    }
    names.push_back(name);
  }
  fail("tokenizer_config.json: \"chat_template\" has no template named \"default\" (has: {})", fmt::join(names, ", "));
}

ChatTemplate ChatTemplate::from_model_dir(const std::filesystem::path& model_dir) {
  const auto config_path = model_dir / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    nlohmann::json config;
    try {
      config = nlohmann::json::parse(read_text_file(config_path));
    } catch (const nlohmann::json::parse_error& e) {
      fail("{} is not valid JSON: {}", config_path.string(), e.what());
    }
    if (config.contains("chat_template")) return from_tokenizer_config(config);
  }
  const auto jinja_path = model_dir / "chat_template.jinja";
  FP4_CHECK(std::filesystem::exists(jinja_path),
            "{}: no chat template (neither tokenizer_config.json's "
            "chat_template nor chat_template.jinja)",
            model_dir.string());
  return from_jinja(read_text_file(jinja_path));
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 bool enable_thinking) const {
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    FP4_CHECK(role == "system" || role == "user" || role == "assistant",
              "chat message {}: role \"{}\" is not supported (system, user or assistant; tool messages are not "
              "supported yet)",
              i, role);
  }
  std::string out;
  if (variant_ == Variant::kQwen3) {
    out = render_qwen3(messages);
  } else {
    for (const ChatMessage& message : messages) {
      out += "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n";
    }
  }
  if (add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (variant_ == Variant::kQwen3 && !enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

// Qwen3: assistant turns after the last user query keep their reasoning in a <think> block (the last message
// always gets one); earlier assistant turns lose everything up to their last </think>.
std::string ChatTemplate::render_qwen3(const std::vector<ChatMessage>& messages) const {
  const size_t n = messages.size();
  size_t last_query = n == 0 ? 0 : n - 1;
  for (size_t i = n; i-- > 0;) {
    const std::string& content = messages[i].content;
    const bool tool_response = content.starts_with("<tool_response>") && content.ends_with("</tool_response>");
    if (messages[i].role == "user" && !tool_response) {
      last_query = i;
      break;
    }
  }
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    const ChatMessage& message = messages[i];
    if (message.role != "assistant") {
      out += "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n";
      continue;
    }
    std::string content = message.content;
    std::string reasoning;
    if (message.reasoning_content) {
      reasoning = *message.reasoning_content;
    } else if (const size_t first_close = content.find("</think>"); first_close != std::string::npos) {
      const std::string before = strip_newlines(std::string_view(content).substr(0, first_close), false, true);
      const size_t open = before.rfind("<think>");
      reasoning = strip_newlines(open == std::string::npos ? before : before.substr(open + 7), true, false);
      content = strip_newlines(content.substr(content.rfind("</think>") + 8), true, false);
    }
    out += "<|im_start|>assistant\n";
    if (i > last_query && (i + 1 == n || !reasoning.empty())) {
      out +=
          "<think>\n" + strip_newlines(reasoning, true, true) + "\n</think>\n\n" + strip_newlines(content, true, false);
    } else {
      out += content;
    }
    out += "<|im_end|>\n";
  }
  return out;
}

}  // namespace fp4serve
