#!/usr/bin/env bash
# Memory release on the GPU (issue 13, /release_memory_occupation), from binaries built on the workstation.
# On the workstation: `memory_release.sh --pack BUILD DIR` puts fp4serve and test_kernels_cuda from the CUDA build
# BUILD, stripped, with the shared libraries a bare device machine lacks, into DIR/bundle.tar.xz (DIR git-ignored,
# e.g. .carry/memory; pass it in `carry`). On the device, from the repository root: `memory_release.sh --prebuilt DIR`
#   1. test_kernels_cuda CudaMemoryRelease*: cudaMemGetInfo around the release of a 512 MiB cuMemMap range, the
#      address after resume, copies and memsets there; the arena's offload round trip;
#   2. HTTP, serve --device cuda with a 3 GB KV cache: GPU memory in use (nvidia-smi) after start, after releasing
#      everything and after resuming; the RL flow (release all, resume weights, reload B, resume kv_cache) answers
#      with the same tokens and logprobs as a fresh GPU server on B, in both --weights-release-mode values.
# Writes summary.txt and logs.tar to $OUT.
set -uo pipefail
if [ "${1:-}" = "--pack" ] && [ -n "${2:-}" ] && [ -n "${3:-}" ]; then
  build=$2 dir=$3
  rm -rf "$dir" && mkdir -p "$dir/lib"
  strip -o "$dir/fp4serve" "$build/fp4serve" && strip -o "$dir/test_kernels_cuda" "$build/tests/test_kernels_cuda" ||
    exit 1
  ldd "$dir/fp4serve" "$dir/test_kernels_cuda" | awk '/=> \// {print $3}' | sort -u |
    grep -vE '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libcuda|libcudart|libcublas[^/]*|libstdc\+\+|libgcc_s|libgomp|libssl|libcrypto|libz)\.so' |
    while read -r lib; do cp -L "$lib" "$dir/lib/"; done
  (cd "$dir" && tar -cf - fp4serve test_kernels_cuda lib | xz -6 -T2 > bundle.tar.xz && rm -rf fp4serve test_kernels_cuda lib)
  ls -l "$dir"
  exit 0
fi
[ "${1:-}" = "--prebuilt" ] && [ -n "${2:-}" ] || { echo "usage: $0 --pack BUILD DIR | --prebuilt DIR" >&2; exit 2; }
OUT=${OUT:-/tmp/fp4serve-device-out}
mkdir -p "$OUT/logs" /tmp/fp4serve-memory
tar -xJf "$2/bundle.tar.xz" -C /tmp/fp4serve-memory || exit 1
bin=/tmp/fp4serve-memory
export LD_LIBRARY_PATH="$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" OMP_WAIT_POLICY=passive
summary=()
record() { summary+=("$(printf '%-60s exit %s' "$1" "$2")"); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/logs/env.log"

timeout 120 "$bin/test_kernels_cuda" --gtest_filter='CudaMemoryRelease*' 2>&1 | tee "$OUT/logs/range_test.log"
record "test_kernels_cuda CudaMemoryRelease*" "${PIPESTATUS[0]}"

source "$(dirname "$0")/serve_util.sh"
gpu_used_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
# A server on $1 with release mode $2: an answer, then (unless $3 is fresh_b) the RL flow with the GPU memory in use
# at each stage, then the answer again; everything into $OUT/logs/$3_*.
rl_flow() {
  local model=$1 mode=$2 name=$3
  serve_on_free_port "$bin/fp4serve" "$OUT/logs/serve_$3.log" 60 --model-path "$model" --device cuda \
    --act-quant none --max-total-tokens 1000000 --weights-release-mode "$mode" || return 1
  local url=$SERVER_URL server=$SERVER_PID
  post() { curl -s -X POST "$url/$1" -H 'Content-Type: application/json' -d "$2"; echo; }
  local request='{"input_ids": [3,14,15,92,65,35,89,79], "return_logprob": true,
                  "sampling_params": {"temperature": 0, "max_new_tokens": 24, "ignore_eos": true}}'
  post generate "$request" > "$OUT/logs/${name}_before.json"
  if [ "$name" != fresh_b ]; then
    local started released resumed
    started=$(gpu_used_mib)
    post release_memory_occupation '{}' > "$OUT/logs/${name}_release.json"
    released=$(gpu_used_mib)
    post resume_memory_occupation '{"tags": ["weights"]}' >> "$OUT/logs/${name}_release.json"
    post update_weights_from_disk "{\"model_path\": \"$PWD/models/qwen3-moe-arith-b-nvfp4\"}" \
      >> "$OUT/logs/${name}_release.json"
    post resume_memory_occupation '{"tags": ["kv_cache"]}' >> "$OUT/logs/${name}_release.json"
    resumed=$(gpu_used_mib)
    echo "$name: GPU memory used (MiB): started $started, released $released, resumed $resumed"
  fi
  post generate "$request" > "$OUT/logs/${name}_after.json"
  kill "$server"
  wait "$server" 2> /dev/null
}
{
  rl_flow models/qwen3-moe-arith-b-nvfp4 offload fresh_b
  rl_flow models/qwen3-moe-arith-a-nvfp4 offload offload
  rl_flow models/qwen3-moe-arith-a-nvfp4 discard discard
  cat "$OUT/logs/offload_release.json"
  python3 - "$OUT/logs" << 'PY'
import json, sys
d = sys.argv[1]
answer = lambda name: json.load(open(f"{d}/{name}.json"))
fresh = answer("fresh_b_after")["meta_info"]["output_token_logprobs"]
ok = True
for mode in ("offload", "discard"):
    same = answer(f"{mode}_after")["meta_info"]["output_token_logprobs"] == fresh
    ok &= same
    print(f"{mode}: after release all / resume weights / reload B / resume kv_cache:",
          "bitwise equal to a fresh server on B" if same else "MISMATCH")
sys.exit(0 if ok else 1)
PY
} 2>&1 | tee "$OUT/logs/http.log"
record "HTTP RL flow (serve --device cuda)" "${PIPESTATUS[0]}"

{
  echo "== memory_release.sh: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) =="
  printf '%s\n' "${summary[@]}"
  grep -hE "cudaMemGetInfo|GPU memory used|bitwise|MISMATCH|^\[ +(OK|FAILED) +\]" "$OUT/logs/range_test.log" \
    "$OUT/logs/http.log"
} | tee "$OUT/summary.txt"
tar -cf "$OUT/logs.tar" -C "$OUT" logs && rm -rf "$OUT/logs"
! grep -qvE "exit 0$" <(printf '%s\n' "${summary[@]}")
