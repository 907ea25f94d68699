// Drives a running fp4serve with the official `openai` npm client: completions and chat completions, streaming and
// not. Usage: node openai_client.mjs BASE_URL (e.g. http://127.0.0.1:30000/v1). Checks what a client relies on
// and prints one JSON summary line; exits 1 on the first failure.
import OpenAI from "openai";

const baseURL = process.argv[2];
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 60_000 });

function check(condition, message) {
  if (!condition) {
    console.error(`FAILED: ${message}`);
    process.exit(1);
  }
}

const models = await client.models.list();
const model = models.data[0].id;
check(typeof model === "string" && model.length > 0, "models.list() returns a model id");

const greedy = { model, temperature: 0, max_tokens: 8 };

const completion = await client.completions.create({ ...greedy, prompt: "Once upon a time", logprobs: 2 });
check(completion.object === "text_completion", `completion object is ${completion.object}`);
check(completion.choices.length === 1 && typeof completion.choices[0].text === "string", "one completion choice");
check(completion.usage.completion_tokens === 8, `completion_tokens ${completion.usage.completion_tokens}`);
check(completion.choices[0].logprobs.token_logprobs.length === 8, "completion logprobs per token");

let streamedCompletion = "";
let completionFinish = null;
const completionStream = await client.completions.create({ ...greedy, prompt: "Once upon a time", stream: true });
for await (const chunk of completionStream) {
  for (const choice of chunk.choices) {
    streamedCompletion += choice.text;
    completionFinish = choice.finish_reason ?? completionFinish;
  }
}
check(streamedCompletion === completion.choices[0].text, "streamed completion text equals the non-streamed one");
check(completionFinish === "length", `streamed completion finish_reason ${completionFinish}`);

const messages = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Say hello." },
];
const chat = await client.chat.completions.create({ ...greedy, messages, logprobs: true, top_logprobs: 2 });
check(chat.object === "chat.completion", `chat object is ${chat.object}`);
check(chat.choices[0].message.role === "assistant", "chat message role is assistant");
check(chat.choices[0].logprobs.content.length === chat.usage.completion_tokens, "chat logprobs per token");
check(chat.choices[0].logprobs.content[0].top_logprobs.length === 2, "chat top_logprobs");

let streamedChat = "";
let chatFinish = null;
let usage = null;
const chatStream = await client.chat.completions.create({
  ...greedy,
  messages,
  stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of chatStream) {
  check(chunk.object === "chat.completion.chunk", `chunk object is ${chunk.object}`);
  for (const choice of chunk.choices) {
    streamedChat += choice.delta.content ?? "";
    chatFinish = choice.finish_reason ?? chatFinish;
  }
  if (chunk.usage) usage = chunk.usage;
}
check(streamedChat === chat.choices[0].message.content, "streamed chat content equals the non-streamed one");
check(chatFinish === "length", `streamed chat finish_reason ${chatFinish}`);
check(usage !== null && usage.completion_tokens === chat.usage.completion_tokens, "streamed chat usage");

console.log(JSON.stringify({ ok: true, model, completion: completion.choices[0].text, chat: streamedChat }));
