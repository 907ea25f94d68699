#!/usr/bin/env python3
"""Issue 8's "what a user would do instead" line: the same Qwen3-MoE model in bf16 through PyTorch + transformers.

Builds Qwen3MoeForCausalLM from a checkpoint's config.json (its quantization_config dropped) with random bf16 weights
made directly on the GPU (no checkpoint read), then times greedy `generate` of random prompts at each batch size:
one run of 1 new token (the prefill) and one of --new-tokens; decode tokens/s = batch * (new - 1) / (difference).
Prints a markdown table; a batch that runs out of GPU memory gets an "OOM" row and the next one still runs.
  torch_baseline.py --config DIR/config.json [--batches 1,16,64,256] [--prompt-tokens 512] [--new-tokens 32]
"""
import argparse
import json
import time

import torch
import transformers
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM


def build_model(config_path):
    with open(config_path) as f:
        fields = json.load(f)
    for key in ("quantization_config", "architectures", "model_type"):
        fields.pop(key, None)
    config = Qwen3MoeConfig(**fields)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Qwen3MoeForCausalLM(config)  # initialised in place: N(0, initializer_range) on the GPU
    return model.to(torch.bfloat16).eval(), config


def timed_generate(model, prompts, new_tokens):
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    torch.cuda.synchronize()
    assert out.shape[1] == prompts.shape[1] + new_tokens, out.shape
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--batches", default="1,16,64,256")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    assert args.new_tokens >= 2, "--new-tokens must be at least 2 (one prefill token plus decode)"

    start = time.perf_counter()
    model, config = build_model(args.config)
    torch.cuda.synchronize()
    params = sum(p.numel() for p in model.parameters())
    print(f"## PyTorch {torch.__version__} + transformers {transformers.__version__}, bf16, "
          f"{config.num_hidden_layers} layers, {params / 1e9:.2f} B parameters built on "
          f"{torch.cuda.get_device_name()} in {time.perf_counter() - start:.1f} s; greedy generate, prompt "
          f"{args.prompt_tokens}, {args.new_tokens} new tokens\n", flush=True)
    print("| batch | prefill tok/s | decode tok/s | generate s |\n|---|---|---|---|", flush=True)
    generator = torch.Generator(device="cuda").manual_seed(1)
    def prompts(batch, length):
        return torch.randint(0, config.vocab_size, (batch, length), device="cuda", generator=generator)
    timed_generate(model, prompts(1, 16), 2)  # warm-up: kernels, allocator
    for batch in (int(b) for b in args.batches.split(",")):
        try:
            prefill_s = timed_generate(model, prompts(batch, args.prompt_tokens), 1)
            total_s = timed_generate(model, prompts(batch, args.prompt_tokens), args.new_tokens)
            decode = batch * (args.new_tokens - 1) / max(total_s - prefill_s, 1e-9)
            print(f"| {batch} | {batch * args.prompt_tokens / prefill_s:.1f} | {decode:.1f} | {total_s:.2f} |",
                  flush=True)
        except torch.cuda.OutOfMemoryError:
            print(f"| {batch} | OOM | OOM | - |", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
