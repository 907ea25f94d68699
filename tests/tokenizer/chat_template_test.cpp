// ChatML rendering: Qwen3's template (as shipped in Qwen3's tokenizer_config.json) and plain ChatML, with
// expected prompts worked out by reading those templates by hand; non-ChatML and look-alike templates refused.
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <fstream>

#include "common/error.h"
#include "tests/tokenizer/fixtures.h"
#include "tokenizer/tokenizer.h"

namespace fp4serve {
namespace {

// Qwen3's chat_template (tokenizer_config.json of the Qwen3 releases), as the Jinja source.
const char* kQwen3Template = R"JINJA({%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %})JINJA";

const char* kChatMlTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

std::string refusal(std::string_view jinja) {
  try {
    ChatTemplate::from_jinja(jinja);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ChatTemplate, Qwen3GenerationPromptAndThinkingSwitch) {
  const ChatTemplate chat = ChatTemplate::from_jinja(kQwen3Template);
  EXPECT_EQ(chat.variant(), ChatTemplate::Variant::kQwen3);
  const std::vector<ChatMessage> messages = {{"system", "Be brief."}, {"user", "Hi"}};
  const std::string head = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n";
  EXPECT_EQ(chat.render(messages, /*add_generation_prompt=*/false), head);
  EXPECT_EQ(chat.render(messages, true), head + "<|im_start|>assistant\n");
  EXPECT_EQ(chat.render(messages, true, /*enable_thinking=*/false),
            head + "<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_EQ(chat.render({}, true), "<|im_start|>assistant\n");
}

TEST(ChatTemplate, Qwen3StripsEarlierReasoning) {
  const ChatTemplate chat = ChatTemplate::from_jinja(kQwen3Template);
  // Before the last user query: everything up to the last </think> goes, then leading newlines.
  EXPECT_EQ(chat.render({{"user", "Q1"}, {"assistant", "<think>\nR1\n</think>\n\nA1"}, {"user", "Q2"}}, true),
            "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
            "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n");
  // The final assistant turn (after the last query) keeps a think block, empty when it had none.
  EXPECT_EQ(chat.render({{"user", "Q"}, {"assistant", "A"}}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n");
  EXPECT_EQ(chat.render({{"user", "Q"}, {"assistant", "<think>\n\nR\n\n</think>\n\n\nA"}}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nR\n</think>\n\nA<|im_end|>\n");
  // reasoning_content kept apart: shown for a non-final turn after the last query only when non-empty.
  ChatMessage with_reasoning{"assistant", "A1", "\nR1\n"};
  EXPECT_EQ(chat.render({{"user", "Q"}, with_reasoning, {"assistant", "A2"}}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nR1\n</think>\n\nA1<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\nA2<|im_end|>\n");
  EXPECT_EQ(chat.render({{"user", "Q"}, {"assistant", "A1"}, {"assistant", "A2"}}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\nA2<|im_end|>\n");
}

TEST(ChatTemplate, Qwen3QueryBoundaryRules) {
  const ChatTemplate chat = ChatTemplate::from_jinja(kQwen3Template);
  // A user turn that is only a tool response is not a query: A1 still counts as after the last query.
  EXPECT_EQ(chat.render({{"user", "Q"},
                         {"assistant", "<think>r</think>A1"},
                         {"user", "<tool_response>\nok\n</tool_response>"},
                         {"assistant", "A2"}},
                        false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\nA1<|im_end|>\n"
            "<|im_start|>user\n<tool_response>\nok\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\nA2<|im_end|>\n");
  // No user turn at all: the boundary is the last message, so no turn is "after" it.
  EXPECT_EQ(chat.render({{"system", "S"}, {"assistant", "<think>x</think>y"}}, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>assistant\ny<|im_end|>\n");
  // A system message that is not first is an ordinary turn.
  EXPECT_EQ(chat.render({{"user", "Q"}, {"system", "S"}}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>system\nS<|im_end|>\n");
}

TEST(ChatTemplate, PlainChatMl) {
  const ChatTemplate chat = ChatTemplate::from_jinja(kChatMlTemplate);
  EXPECT_EQ(chat.variant(), ChatTemplate::Variant::kChatMl);
  const std::vector<ChatMessage> messages = {{"system", "S"}, {"user", "U"}, {"assistant", "<think>t</think>A"}};
  const std::string body =
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n<think>t</think>A"
      "<|im_end|>\n";
  EXPECT_EQ(chat.render(messages, false), body);
  // The template has no thinking switch: enable_thinking changes nothing, as in HF.
  EXPECT_EQ(chat.render(messages, true, false), body + "<|im_start|>assistant\n");
}

TEST(ChatTemplate, SynthModelPromptEncodesToSpecialIds) {
  // The template `fp4serve synth` writes (ChatML with Jinja trim markers), rendered then encoded with the synth
  // tokenizer: the markers become their special ids, everything else its bytes.
  const ChatTemplate chat = ChatTemplate::from_jinja(
      "{%- for message in messages %}"
      "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
      "{%- endfor %}"
      "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}");
  EXPECT_EQ(chat.variant(), ChatTemplate::Variant::kChatMl);
  const Tokenizer tokenizer = Tokenizer::from_json(test::synth_tokenizer_json());
  const std::vector<int32_t> ids = tokenizer.encode(chat.render({{"user", "hi"}}, true));
  const std::vector<int32_t> expected = {257, 'u', 's', 'e', 'r', '\n', 'h', 'i', 258, '\n',
                                         257, 'a', 's', 's', 'i', 's', 't', 'a', 'n', 't', '\n'};
  EXPECT_EQ(ids, expected);
}

TEST(ChatTemplate, RefusesWhatItCannotRenderExactly) {
  const std::string llama3 =
      "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
      "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}";
  EXPECT_NE(refusal(llama3).find("chat template not supported: it is not ChatML"), std::string::npos);

  const std::string qwen25_default_system =
      "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
      "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
      "helpful assistant.<|im_end|>\\n' }}{%- endif %}";
  EXPECT_NE(refusal(qwen25_default_system).find("default system prompt"), std::string::npos);

  const std::string forced_think = std::string(kChatMlTemplate) +
                                   "{% if add_generation_prompt %}"
                                   "{{- '<|im_start|>assistant\\n<think>\\n' }}{% endif %}";
  EXPECT_NE(refusal(forced_think).find("opens a <think> block"), std::string::npos);

  const auto replaced = [](std::string text, std::string_view from, std::string_view to) {
    return text.replace(text.find(from), from.size(), to);
  };
  const std::string preserve =
      replaced(kQwen3Template, "{%- if loop.index0 > ns.last_query_index %}",
               "{%- if (preserve_thinking is defined and preserve_thinking) or loop.index0 > ns.last_query_index %}");
  EXPECT_NE(refusal(preserve).find("\"preserve_thinking\""), std::string::npos);

  const std::string trimmed = replaced(kQwen3Template, "content.lstrip('\\n') }}", "content | trim }}");
  EXPECT_NE(refusal(trimmed).find("differs from Qwen3's template"), std::string::npos);

  const std::string chatml_with_trim =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + "
      "'<|im_end|>\\n'}}{% endfor %}";
  EXPECT_NE(refusal(chatml_with_trim).find("does not recognise"), std::string::npos);
  EXPECT_NE(refusal(std::string("{{ bos_token }}") + kChatMlTemplate).find("bos_token"), std::string::npos);
}

TEST(ChatTemplate, RefusesToolRoles) {
  const ChatTemplate chat = ChatTemplate::from_jinja(kQwen3Template);
  try {
    chat.render({{"user", "Q"}, {"tool", "result"}}, true);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chat message 1: role \"tool\""), std::string::npos) << e.what();
  }
}

TEST(ChatTemplate, ReadsTokenizerConfigForms) {
  EXPECT_EQ(ChatTemplate::from_tokenizer_config({{"chat_template", kQwen3Template}}).variant(),
            ChatTemplate::Variant::kQwen3);
  const nlohmann::json listed = {
      {"chat_template",
       {{{"name", "tool_use"}, {"template", "x"}}, {{"name", "default"}, {"template", kChatMlTemplate}}}}};
  EXPECT_EQ(ChatTemplate::from_tokenizer_config(listed).variant(), ChatTemplate::Variant::kChatMl);
  EXPECT_THROW(ChatTemplate::from_tokenizer_config({{"chat_template", {{{"name", "tool_use"}, {"template", "x"}}}}}),
               Error);
  EXPECT_THROW(ChatTemplate::from_tokenizer_config({{"eos_token", "x"}}), Error);

  const auto dir = std::filesystem::path(FP4SERVE_BINARY_DIR) / "chat_template_test_model";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "chat_template.jinja") << kQwen3Template;
  EXPECT_EQ(ChatTemplate::from_model_dir(dir).variant(), ChatTemplate::Variant::kQwen3);
  std::ofstream(dir / "tokenizer_config.json") << nlohmann::json{{"chat_template", kChatMlTemplate}}.dump();
  EXPECT_EQ(ChatTemplate::from_model_dir(dir).variant(), ChatTemplate::Variant::kChatMl);
  std::filesystem::remove_all(dir);
  EXPECT_THROW(ChatTemplate::from_model_dir(dir), Error);
}

}  // namespace
}  // namespace fp4serve
