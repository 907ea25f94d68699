#!/usr/bin/env python3
"""Pushes a torch state_dict into a running fp4serve with POST /update_weights_from_tensor (README, "Weight update
from tensors", defines the JSON). CUDA tensors travel as CUDA IPC handles (what torch.multiprocessing's
reduce_tensor shares: the server copies them out of this process's device memory), CPU tensors as inline base64.

Invariants: every tensor is contiguous and stays alive (referenced here) until the response to its push arrives;
the device work that produced it is finished before its handle is sent (torch.cuda.synchronize); a bucket never
splits a layer ("model.layers.N."), so the bf16 weights of a fused group (q/k/v, an expert's gate/up) are quantized
together, as a bf16 checkpoint load does. Python standard library + torch (+ safetensors for the CLI).

    python3 tools/push_weights.py URL CHECKPOINT_DIR [--device cuda|cpu] [--bucket-mb N] [--weight-version V]
"""
import argparse
import base64
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

import torch

# torch dtype -> the name the server reads (str(dtype) without "torch.").
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32",
               torch.uint8: "uint8", torch.float8_e4m3fn: "float8_e4m3fn"}


def serialize_tensor(name, tensor):
    """The JSON entry of one contiguous tensor: its CUDA IPC storage handle, or its bytes inline."""
    if tensor.dtype not in DTYPE_NAMES:
        raise ValueError(f"{name}: dtype {tensor.dtype} cannot be sent; use one of {sorted(DTYPE_NAMES.values())}")
    if not tensor.is_contiguous():
        raise ValueError(f"{name}: not contiguous; send tensor.contiguous() (and keep it alive)")
    entry = {"name": name, "dtype": DTYPE_NAMES[tensor.dtype], "size": list(tensor.shape),
             "stride": list(tensor.stride()), "storage_offset": tensor.storage_offset()}
    if tensor.is_cuda:
        # What torch.multiprocessing.reductions.reduce_tensor sends for a CUDA tensor.
        device, handle, storage_size_bytes, storage_offset_bytes, *_ = tensor.untyped_storage()._share_cuda_()
        entry["cuda_ipc"] = {"device": device, "handle": base64.b64encode(handle).decode("ascii"),
                             "storage_size_bytes": storage_size_bytes, "storage_offset_bytes": storage_offset_bytes}
    else:
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        entry["storage_offset"] = 0
        entry["data"] = base64.b64encode(raw).decode("ascii")
    return entry


def bucket_names(state_dict, bucket_bytes):
    """Lists of names, each at most bucket_bytes unless one layer alone is larger; layers are never split."""
    units = {}
    for name, tensor in state_dict.items():
        match = re.match(r"(model\.layers\.\d+\.)", name)
        units.setdefault(match.group(1) if match else name, []).append(name)
    buckets, current, current_bytes = [], [], 0
    for names in units.values():
        nbytes = sum(state_dict[n].numel() * state_dict[n].element_size() for n in names)
        if current and current_bytes + nbytes > bucket_bytes:
            buckets.append(current)
            current, current_bytes = [], 0
        current += names
        current_bytes += nbytes
    if current:
        buckets.append(current)
    return buckets


def post_json(url, body, api_key=None, timeout=3600):
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return {"success": False, "message": f"HTTP {e.code}: {text}"}


def push_state_dict(url, state_dict, *, flush_cache=True, weight_version=None, bucket_bytes=1 << 30, api_key=None,
                    log=print):
    """Pushes every tensor of state_dict (name -> tensor) in buckets; weight_version is set by the last push.
    Returns one dict per push: tensors, bytes, seconds. Raises RuntimeError with the server's message on a failure."""
    endpoint = url.rstrip("/") + "/update_weights_from_tensor"
    tensors = {name: t.detach().contiguous() for name, t in state_dict.items()}
    buckets = bucket_names(tensors, bucket_bytes)
    pushes = []
    for i, names in enumerate(buckets):
        last = i == len(buckets) - 1
        start = time.perf_counter()
        if any(tensors[n].is_cuda for n in names):
            torch.cuda.synchronize()  # the server reads the memory with no event to wait on
        body = {"serialized_named_tensors": [[serialize_tensor(n, tensors[n]) for n in names]],
                "flush_cache": flush_cache, "abort_all_requests": False}
        if last and weight_version is not None:
            body["weight_version"] = weight_version
        answer = post_json(endpoint, body, api_key)
        seconds = time.perf_counter() - start
        if not answer.get("success"):
            raise RuntimeError(f"push {i + 1}/{len(buckets)} failed: {answer.get('message', answer)}")
        nbytes = sum(tensors[n].numel() * tensors[n].element_size() for n in names)
        pushes.append({"tensors": len(names), "bytes": nbytes, "seconds": seconds})
        log(f"push {i + 1}/{len(buckets)}: {len(names)} tensors, {nbytes / 1e6:.1f} MB in {seconds:.3f} s "
            f"({nbytes / seconds / 1e9:.2f} GB/s)")
    return pushes


def load_checkpoint(directory, device):
    """Every tensor of a safetensors checkpoint directory (single file or sharded), on `device`."""
    from safetensors.torch import load_file
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state_dict = {}
    for file in files:
        state_dict.update(load_file(os.path.join(directory, file), device=device))
    return state_dict


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:30000")
    parser.add_argument("checkpoint_dir", help="a safetensors checkpoint (bf16, or NVFP4 as the server serves)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda: CUDA IPC handles (the server must serve on the same GPU); cpu: bytes inline")
    parser.add_argument("--bucket-mb", type=float, default=1024, help="bytes per push (a layer is never split)")
    parser.add_argument("--weight-version", default=None, help="the label the last push sets")
    parser.add_argument("--no-flush-cache", action="store_true", help="keep the prefix cache (same weights only)")
    parser.add_argument("--api-key", default=os.environ.get("FP4SERVE_ADMIN_API_KEY"),
                        help="admin API key (default: $FP4SERVE_ADMIN_API_KEY)")
    args = parser.parse_args()

    state_dict = load_checkpoint(args.checkpoint_dir, args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    pushes = push_state_dict(args.url, state_dict, flush_cache=not args.no_flush_cache,
                             weight_version=args.weight_version, bucket_bytes=int(args.bucket_mb * (1 << 20)),
                             api_key=args.api_key)
    seconds = time.perf_counter() - start
    nbytes = sum(p["bytes"] for p in pushes)
    print(f"pushed {len(state_dict)} tensors, {nbytes / 1e6:.1f} MB in {len(pushes)} pushes, {seconds:.3f} s "
          f"({nbytes / seconds / 1e9:.2f} GB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
