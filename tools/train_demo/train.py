"""Trains the bundled demo model: a tiny Qwen3MoeForCausalLM that solves arithmetic word problems (corpus.py).

Run on a GPU machine (scripts/device/train_demo.sh): python3 train.py --out DIR [--train-seconds S].
Training time is a hard budget (steps are not fixed): a smoke checkpoint after --smoke-seconds goes through the
whole export/check/eval path first, so any bug fails within the first minute; step A is saved at --a-fraction of
the budget, step B at its end. Each checkpoint is a bf16 HF directory checked by hf_export.check_export and scored
greedily on the held-out problems. Writes DIR/{step_a,step_b}/, DIR/summary.json, DIR/heldout.jsonl,
DIR/tokenizer_check.jsonl; the loss curve goes to stdout.
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402
import hf_export  # noqa: E402
import tokenizer_build  # noqa: E402

# hidden a multiple of 64, moe_intermediate a multiple of 32: every NVFP4 GEMM has K % 16 == 0 (and 2I != H, so
# fused-expert tensors are unambiguous when exported).
MODEL = dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
             intermediate_size=512, moe_intermediate_size=128, num_experts=8, num_experts_per_tok=2,
             rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=512, router_aux_loss_coef=0.01)
VOCAB_SIZE = 512
N_TRAIN, N_HELDOUT = 150_000, 256
BATCH, PEAK_LR, MIN_LR_FRACTION, WARMUP_STEPS = 256, 2e-3, 0.05, 200
MAX_NEW_TOKENS = 64


def log(msg):
    print(msg, flush=True)


def encode_corpus(tok, problems, eos_id):
    """Padded [N, L] input ids and labels (-100 on the prompt and the padding), and lengths, as CPU tensors."""
    prompts = tok.encode_batch([corpus.chat_prompt(p["question"]) for p in problems])
    answers = tok.encode_batch([p["solution"] for p in problems])
    rows = [(pr.ids, an.ids + [eos_id]) for pr, an in zip(prompts, answers)]
    longest = max(len(p) + len(a) for p, a in rows)
    assert longest <= MODEL["max_position_embeddings"], longest
    ids = torch.full((len(rows), longest), eos_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), -100, dtype=torch.long)
    lengths = torch.empty(len(rows), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p): len(p) + len(a)] = torch.tensor(a)
        lengths[i] = len(p) + len(a)
    return ids, labels, lengths


@torch.no_grad()
def evaluate(ckpt_dir, tok, problems, ids):
    """Greedy answers of the saved checkpoint (fp32 compute over its bf16 weights) and the accuracy."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(ckpt_dir, dtype=torch.float32).cuda().eval()
    prompts = [tok.encode(corpus.chat_prompt(p["question"])).ids for p in problems]
    width = max(map(len, prompts))
    pad = ids["<|endoftext|>"]
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts]).cuda()
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]).cuda()
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                         eos_token_id=[ids["<|im_end|>"], pad], pad_token_id=pad)
    texts = [tok.decode(row[width:].tolist(), skip_special_tokens=True) for row in out]
    parsed = [corpus.parse_answer(t) for t in texts]
    correct = sum(a == p["answer"] for a, p in zip(parsed, problems))
    invalid = sum(a is None for a in parsed)
    return {"accuracy": correct / len(problems), "invalid": invalid / len(problems), "n": len(problems),
            "answers": [{"text": t, "parsed": a} for t, a in zip(texts, parsed)]}


def lr_at(step, train_fraction):
    """Linear warmup, then cosine over the time budget (the budget is time, not steps) down to MIN_LR_FRACTION."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, train_fraction)))
    return PEAK_LR * warm * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * cos)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-seconds", type=float, default=280)
    ap.add_argument("--smoke-seconds", type=float, default=20)
    ap.add_argument("--a-fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "train.py needs a GPU"
    from transformers import AutoConfig, AutoModelForCausalLM
    import transformers
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()

    train_set = corpus.make_split(N_TRAIN, heldout=False, seed=args.seed)
    heldout = corpus.make_split(N_HELDOUT, heldout=True, seed=args.seed + 1)
    with open(os.path.join(args.out, "heldout.jsonl"), "w") as f:
        for p in heldout:
            f.write(json.dumps(p) + "\n")
    log(f"corpus: {len(train_set)} training, {len(heldout)} held-out problems ({time.time() - t0:.1f}s)")

    tok = tokenizer_build.train_tokenizer((p["question"] + "\n" + p["solution"] for p in train_set), VOCAB_SIZE)
    ids = {s: tok.token_to_id(s) for s in tokenizer_build.SPECIALS}
    assert tok.get_vocab_size() <= VOCAB_SIZE
    with open(os.path.join(args.out, "tokenizer_check.jsonl"), "w") as f:  # HF's ids, for fp4serve's tokenizer test
        for p in heldout[:64]:
            for text in (corpus.chat_prompt(p["question"]), p["solution"]):
                f.write(json.dumps({"text": text, "ids": tok.encode(text).ids}) + "\n")
    all_ids, all_labels, lengths = encode_corpus(tok, train_set, ids["<|im_end|>"])
    log(f"tokenizer: {tok.get_vocab_size()} tokens; sequences up to {all_ids.shape[1]} tokens, mean "
        f"{lengths.float().mean():.1f} ({time.time() - t0:.1f}s)")

    def save(name, model):
        ckpt = os.path.join(args.out, name)
        hf_export.save_checkpoint(model, MODEL, VOCAB_SIZE, ids, ckpt)
        tokenizer_build.save_tokenizer(tok, ckpt, MODEL["max_position_embeddings"])
        hf_export.check_export(model, ckpt, MODEL, all_ids[0, : lengths[0]].tolist())
        return ckpt

    init_dir = os.path.join(args.out, "init_config")
    os.makedirs(init_dir, exist_ok=True)
    with open(os.path.join(init_dir, "config.json"), "w") as f:
        json.dump(hf_export.config_json(MODEL, VOCAB_SIZE, ids), f)
    config = AutoConfig.from_pretrained(init_dir)  # the same parsing as a reload of the exported files
    shutil.rmtree(init_dir)
    config.output_router_logits = True  # adds router_aux_loss_coef * load-balancing loss to the training loss
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config).float().cuda().train()  # fp32 masters, bf16 autocast
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters, {config.num_hidden_layers} layers, {config.num_experts} "
        f"experts top-{config.num_experts_per_tok}")

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=PEAK_LR, betas=(0.9, 0.95), fused=True)
    all_ids, all_labels, lengths = all_ids.cuda(), all_labels.cuda(), lengths.cuda()
    gen = torch.Generator(device="cuda").manual_seed(args.seed)
    summary = {"model": MODEL, "vocab_size": VOCAB_SIZE, "parameters": n_params, "batch": BATCH, "peak_lr": PEAK_LR,
               "train_problems": len(train_set), "heldout_problems": len(heldout), "loss_curve": [], "checkpoints": {}}
    marks = [("smoke", args.smoke_seconds), ("step_a", args.a_fraction * args.train_seconds),
             ("step_b", args.train_seconds)]
    train_time, step, window, tokens = 0.0, 0, [], 0
    while marks:
        tick = time.time()
        idx = torch.randint(0, all_ids.shape[0], (BATCH,), device="cuda", generator=gen)
        width = int(lengths[idx].max())
        for group in opt.param_groups:
            group["lr"] = lr_at(step, train_time / args.train_seconds)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(input_ids=all_ids[idx, :width], labels=all_labels[idx, :width])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens += BATCH * width
        aux = out.aux_loss.detach() if out.aux_loss is not None else 0.0
        window.append(out.loss.detach() - config.router_aux_loss_coef * aux)
        if step % 100 == 0 or step == 1:
            ce = torch.stack(window).mean().item()
            window.clear()
            assert math.isfinite(ce), f"loss is {ce} at step {step}"
            torch.cuda.synchronize()
            summary["loss_curve"].append({"step": step, "seconds": round(train_time, 1), "loss": round(ce, 4)})
            log(f"step {step:5d}  train {train_time:6.1f}s  loss {ce:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                f"{tokens / max(train_time, 1e-9) / 1e3:.0f}k tok/s")
        torch.cuda.synchronize()
        train_time += time.time() - tick
        if train_time < marks[0][1]:
            continue
        name = marks.pop(0)[0]
        ckpt = save(name, model)
        problems = heldout[:16] if name == "smoke" else heldout
        result = evaluate(ckpt, tok, problems, ids)
        log(f"{name}: step {step}, {train_time:.0f}s of training, held-out accuracy {result['accuracy']:.3f} "
            f"(invalid {result['invalid']:.3f}, n={result['n']}); e.g. {result['answers'][0]['text']!r}")
        if name == "smoke":
            shutil.rmtree(ckpt)
            continue
        summary["checkpoints"][name] = {"step": step, "train_seconds": round(train_time, 1), **result}
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    log(f"done in {time.time() - t0:.0f}s: " + ", ".join(
        f"{k} step {v['step']} accuracy {v['accuracy']:.3f}" for k, v in summary["checkpoints"].items()))


if __name__ == "__main__":
    main()
