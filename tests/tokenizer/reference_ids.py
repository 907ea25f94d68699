#!/usr/bin/env python3
"""Independent reference for the Qwen-style fixture of fixtures.h: prints the expected ids used by
tokenizer_test.cpp. Built on Python's unicodedata (NFC) and the `regex` module (Unicode classes), with the
plain "merge the lowest-rank pair, leftmost first" BPE loop, so it shares no code with src/tokenizer.
Run: python3 tests/tokenizer/reference_ids.py (needs `pip install regex` or python3-regex)."""
import unicodedata

import regex

PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
ADDED = {"<|endoftext|>": 300, "<|im_start|>": 301, "<|im_end|>": 302, "<think>": 303, "</think>": 304}


def bytes_to_unicode():
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 256
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(extra)
            extra += 1
    return table


BYTE_CHAR = bytes_to_unicode()
SP, NL = BYTE_CHAR[ord(" ")], BYTE_CHAR[ord("\n")]
MERGES = [(SP, "t"), ("h", "e"), (SP + "t", "he"), ("i", "n"), (SP, SP), (NL, NL), ("\u00c3", "\u00a9"), ("'", "s"),
          (SP, "w"), ("o", "r"), (SP + "w", "or"), ("l", "d"), (SP + "wor", "ld")]
VOCAB = {BYTE_CHAR[b]: b for b in range(256)}
for i, (a, b) in enumerate(MERGES):
    VOCAB[a + b] = 256 + i
RANK = {pair: i for i, pair in enumerate(MERGES)}


def bpe(word):
    symbols = list(word)
    while True:
        best = None
        for i in range(len(symbols) - 1):
            rank = RANK.get((symbols[i], symbols[i + 1]))
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            return [VOCAB[s] for s in symbols]
        i = best[1]
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]


def encode(text):
    ids, pos, plain = [], 0, ""
    while pos <= len(text):
        hit = None
        for token in sorted(ADDED, key=len, reverse=True):
            if text.startswith(token, pos):
                hit = token
                break
        if hit is None and pos < len(text):
            plain += text[pos]
            pos += 1
            continue
        for piece in regex.findall(PATTERN, unicodedata.normalize("NFC", plain)):
            ids += bpe("".join(BYTE_CHAR[b] for b in piece.encode("utf-8")))
        plain = ""
        if hit is None:
            break
        ids.append(ADDED[hit])
        pos += len(hit)
    return ids


CASES = [
    "Hello world",
    " the the",
    "it's THE dog's",
    "They'RE here, we'll see",
    "12345 apples",
    "x = 3.14159;",
    "line1\nline2\n\n\nend",
    "trailing spaces   ",
    "   leading and  double  spaces",
    "tabs\tand\r\nCRLF",
    "e\u0301t\u00e9",
    "\u4f60\u597d\uff0c\u4e16\u754c",
    "emoji \U0001F600\U0001F44D\U0001F3FD!",
    "<|im_start|>user\nhi<|im_end|>\n<think>\nok</think>",
    "a\u0085b\u00a0c\u2028d\u3000e \u00a0 \u2029",
    "a  \u2028  b  \u3000\u3000  c\u0085  \u0085d",
    "",
]

def cpp_literal(text):
    escapes = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}
    out = ""
    for c in text:
        if c in escapes:
            out += escapes[c]
        elif ord(c) < 0x80:
            out += c
        elif ord(c) < 0x10000:
            out += f"\\u{ord(c):04x}"
        else:
            out += f"\\U{ord(c):08x}"
    return f'"{out}"'


if __name__ == "__main__":
    for case in CASES:
        print(f"    {{{cpp_literal(case)}, {{{', '.join(map(str, encode(case)))}}}}},")
