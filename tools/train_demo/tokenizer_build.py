"""A byte-level BPE tokenizer trained on the corpus, in the tokenizer.json subset fp4serve loads (Qwen2/3's):
NFC normalizer, Split on Qwen's regex (digits one by one) then ByteLevel without its own regex, BPE without unk,
ByteLevel decoder; specials <|endoftext|>, <|im_start|>, <|im_end|> (ids 0, 1, 2) and a ChatML chat template.
"""
import json
import os

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The ChatML template fp4serve recognises (the same text `fp4serve synth` writes).
CHAT_TEMPLATE = ("{%- for message in messages %}"
                 "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
                 "{%- endfor %}"
                 "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def train_tokenizer(texts, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    for i, special in enumerate(SPECIALS):
        assert tok.token_to_id(special) == i, special
    sample = "Ava has 177 beads.\n177+208=385\n#### 385"
    ids = tok.encode(sample).ids
    assert tok.decode(ids) == sample, "byte-level round trip"
    assert [tok.id_to_token(i) for i in tok.encode("1234").ids] == ["1", "2", "3", "4"], "digits split one by one"
    return tok


def save_tokenizer(tok, out_dir, max_length):
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "chat_template": CHAT_TEMPLATE, "model_max_length": max_length,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
