"""Writes a trained Qwen3MoeForCausalLM as the bf16 HF checkpoint fp4serve reads, and checks it two ways.

Invariants: tensor names are the per-expert HF names of /work/shared/spec/qwen3-moe.md whatever layout the
installed transformers keeps in memory (transformers 5 fuses experts into 3-D gate_up_proj / down_proj);
config.json carries rope_theta (fp4serve requires it) and rope_parameters (transformers 5 reads it).
check_export() proves the files right: transformers reloads them to the same logits, and an independent
float32 forward written from the spec over the saved tensors agrees with transformers.
"""
import copy
import json
import os
import re

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


def config_json(cfg, vocab_size, special_ids):
    """The config.json written next to the weights (fp4serve's reader and transformers both accept it)."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "hidden_size": cfg["hidden_size"], "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"], "num_key_value_heads": cfg["num_key_value_heads"],
        "head_dim": cfg["head_dim"], "intermediate_size": cfg["intermediate_size"],
        "moe_intermediate_size": cfg["moe_intermediate_size"], "num_experts": cfg["num_experts"],
        "num_experts_per_tok": cfg["num_experts_per_tok"], "norm_topk_prob": True, "decoder_sparse_step": 1,
        "mlp_only_layers": [], "vocab_size": vocab_size, "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_theta": cfg["rope_theta"], "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg["rope_theta"]},
        "max_position_embeddings": cfg["max_position_embeddings"], "tie_word_embeddings": False,
        "attention_bias": False, "attention_dropout": 0.0, "hidden_act": "silu", "initializer_range": 0.02,
        "use_cache": True, "use_sliding_window": False, "sliding_window": None, "output_router_logits": False,
        "router_aux_loss_coef": cfg["router_aux_loss_coef"], "torch_dtype": "bfloat16",
        "bos_token_id": special_ids["<|endoftext|>"], "eos_token_id": special_ids["<|im_end|>"],
        "pad_token_id": special_ids["<|endoftext|>"],
    }


def per_expert_tensors(model, cfg):
    """name -> contiguous bf16 CPU tensor with the checkpoint's names (fused experts split per expert)."""
    E, I, H = cfg["num_experts"], cfg["moe_intermediate_size"], cfg["hidden_size"]
    assert I != H and 2 * I != H, "fused-expert orientation is told apart by shape"
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.bfloat16).cpu()
        fused = re.fullmatch(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)(?:\.weight)?", name)
        if fused is None or t.dim() != 3:
            out[name] = t.contiguous()
            continue
        prefix, kind = fused.groups()
        want = (E, 2 * I, H) if kind == "gate_up_proj" else (E, H, I)
        t = t if tuple(t.shape) == want else t.transpose(1, 2)
        assert tuple(t.shape) == want, (name, tuple(t.shape), want)
        for e in range(E):
            if kind == "gate_up_proj":  # rows [gate; up], as transformers concatenates them when loading
                out[f"{prefix}.{e}.gate_proj.weight"] = t[e, :I].contiguous()
                out[f"{prefix}.{e}.up_proj.weight"] = t[e, I:].contiguous()
            else:
                out[f"{prefix}.{e}.down_proj.weight"] = t[e].contiguous()
    return out


def expected_names(cfg):
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        names |= {p + n + ".weight" for n in ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                                              "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                              "self_attn.q_norm", "self_attn.k_norm", "mlp.gate")}
        names |= {f"{p}mlp.experts.{e}.{w}_proj.weight"
                  for e in range(cfg["num_experts"]) for w in ("gate", "up", "down")}
    return names


def save_checkpoint(model, cfg, vocab_size, special_ids, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    tensors = per_expert_tensors(model, cfg)
    missing, extra = expected_names(cfg) - tensors.keys(), tensors.keys() - expected_names(cfg)
    assert not missing and not extra, f"checkpoint names: missing {sorted(missing)[:4]}, extra {sorted(extra)[:4]}"
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config_json(cfg, vocab_size, special_ids), f, indent=2)
    eos, eot = special_ids["<|im_end|>"], special_ids["<|endoftext|>"]
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": eot, "eos_token_id": [eos, eot], "pad_token_id": eot, "do_sample": False}, f,
                  indent=2)


def _rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, theta):  # x [T, heads, D], neox halves
    T, D = x.shape[0], x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, D // 2, dtype=torch.float64) * 2 / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None]
    c, s = ang.cos().float()[:, None], ang.sin().float()[:, None]
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def spec_forward(w, cfg, ids):
    """Logits [T, V] of one sequence, float32, written from the spec's pseudo-code (no transformers code)."""
    w = {k: v.float() for k, v in w.items()}
    eps, D = cfg["rms_norm_eps"], cfg["head_dim"]
    nh, nkv, k_top = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_experts_per_tok"]
    x = w["model.embed_tokens.weight"][ids]
    T = x.shape[0]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = _rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(T, nh, D)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(T, nkv, D)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(T, nkv, D)
        q = _rope(_rmsnorm(q, w[p + "self_attn.q_norm.weight"], eps), cfg["rope_theta"])
        k = _rope(_rmsnorm(k, w[p + "self_attn.k_norm.weight"], eps), cfg["rope_theta"])
        heads = []
        for head in range(nh):
            kv = head // (nh // nkv)
            scores = (q[:, head] @ k[:, kv].T) / D ** 0.5
            heads.append(scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v[:, kv])
        x = x + torch.cat(heads, -1) @ w[p + "self_attn.o_proj.weight"].T
        h = _rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        probs = (h @ w[p + "mlp.gate.weight"].T).softmax(-1)
        top_p, top_e = probs.topk(k_top, -1)
        top_p = top_p / top_p.sum(-1, keepdim=True)
        y = torch.zeros_like(x)
        for t in range(T):
            for j in range(k_top):
                e = p + f"mlp.experts.{int(top_e[t, j])}."
                act = F.silu(h[t] @ w[e + "gate_proj.weight"].T) * (h[t] @ w[e + "up_proj.weight"].T)
                y[t] += top_p[t, j] * (act @ w[e + "down_proj.weight"].T)
        x = x + y
    return _rmsnorm(x, w["model.norm.weight"], eps) @ w["lm_head.weight"].T


@torch.no_grad()
def check_export(model, out_dir, cfg, sample_ids):
    """Logits of one sequence three ways, all float32 on the CPU: the trained model with its weights rounded to
    bf16 as saved, transformers reloading out_dir, and spec_forward over the saved tensors. Raises on mismatch."""
    from transformers import AutoModelForCausalLM
    ids = torch.tensor(sample_ids)[None]
    rounded = copy.deepcopy(model).cpu().eval()
    for param in rounded.parameters():  # parameters only: buffers (rotary inv_freq) stay float32, as on reload
        param.data = param.data.to(torch.bfloat16).float()
    trained = rounded(ids).logits[0].float()
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    got = reloaded(ids).logits[0].float()
    spec = spec_forward(load_file(os.path.join(out_dir, "model.safetensors")), cfg, ids[0])
    scale = max(got.abs().max().item(), 1.0)
    reload_err, spec_err = (got - trained).abs().max().item(), (spec - got).abs().max().item()
    print(f"export check {os.path.basename(out_dir)}: |logits| max {scale:.2f}, transformers reload vs trained "
          f"{reload_err:.2e}, spec forward vs transformers {spec_err:.2e}", flush=True)
    assert reload_err <= 2e-3 * scale, "transformers does not read back the trained model"
    assert spec_err <= 2e-3 * scale, "the saved tensors do not compute, by the spec, what transformers computes"
