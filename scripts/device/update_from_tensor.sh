#!/usr/bin/env bash
# Weight update from a colocated trainer's tensors (issue 13, POST /update_weights_from_tensor, CUDA IPC), on the
# GPU, from binaries built on the workstation: `gpu_engine.sh --pack BUILD DIR` makes the bundle (its fp4serve is
# all this script uses; DIR git-ignored, e.g. .carry/gpu, passed in `carry`). On the device, from the repository root
# (torch and safetensors installed): `update_from_tensor.sh --prebuilt DIR`, for the bundled model and (unless
# SYNTH_LAYERS=0) a synthetic qwen3-30b-a3b of SYNTH_LAYERS (default 2) layers made here:
#   1. reference digests: a server on B (NVFP4) from disk; a server on A reloading B-bf16 from disk (quantized on
#      load), with the time of that /update_weights_from_disk;
#   2. a server on A (--device cuda), pushed B-bf16 then B-NVFP4 from a torch process through CUDA IPC
#      (tools/push_weights.py): the served digest after each push equals the disk reference, bitwise; then B-NVFP4
#      inline (--device cpu) for the bundled model; greedy logprobs after the pushes equal the fresh server's on B;
#   3. a table of push times beside the disk reload times.
# Writes summary.txt, table.md and logs.tar to $OUT.
set -uo pipefail
[ "${1:-}" = "--prebuilt" ] && [ -n "${2:-}" ] || { echo "usage: $0 --prebuilt DIR" >&2; exit 2; }
OUT=${OUT:-/tmp/fp4serve-device-out}
mkdir -p "$OUT/logs"
source "$(dirname "$0")/prebuilt.sh"
source "$(dirname "$0")/serve_util.sh"
use_prebuilt "$2" || exit 1
bin=$FP4SERVE_BIN
summary=()
record() { summary+=("$(printf '%-64s exit %s' "$1" "$2")"); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/logs/env.log"
python3 -c "import torch, safetensors; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" |
  tee -a "$OUT/logs/env.log"

serve() {  # serve NAME MODEL: a GPU server on MODEL, its log in $OUT/logs/serve_NAME.log
  serve_on_free_port "$bin" "$OUT/logs/serve_$1.log" 120 --model-path "$2" --device cuda --act-quant none \
    --max-total-tokens 100000 --max-request-body-bytes 1000000000
}
stop() { kill "$SERVER_PID"; wait "$SERVER_PID" 2> /dev/null; }
post() { curl -s -X POST "$SERVER_URL/$1" -H 'Content-Type: application/json' -d "$2"; }
digest() { curl -s "$SERVER_URL/get_weights_digest" | python3 -c 'import json,sys; print(json.load(sys.stdin)["weights_digest"])'; }
# Seconds of one /update_weights_from_disk of $1, as the client waits for it; fails unless it succeeded.
reload_seconds() {
  local answer
  answer=$(curl -s -w '\n%{time_total}' -X POST "$SERVER_URL/update_weights_from_disk" \
    -H 'Content-Type: application/json' -d "{\"model_path\": \"$1\"}")
  echo "$answer" | head -1 >> "$OUT/logs/reloads.log"
  echo "$answer" | head -1 | grep -q '"success":true' || return 1
  echo "$answer" | tail -1
}
request='{"input_ids": [3,14,15,92,65,35,89,79], "return_logprob": true,
          "sampling_params": {"temperature": 0, "max_new_tokens": 24, "ignore_eos": true}}'
logprobs() { post generate "$request" | python3 -c 'import json,sys; print(json.load(sys.stdin)["meta_info"]["output_token_logprobs"])'; }
# The push's total seconds, from push_weights.py's summary line (torch may print warnings after it).
push() {  # push DIR DEVICE LOGNAME
  python3 tools/push_weights.py "$SERVER_URL" "$1" --device "$2" --bucket-mb "${BUCKET_MB:-1024}" \
    > "$OUT/logs/push_$3.log" 2>&1 || return 1
  grep '^pushed ' "$OUT/logs/push_$3.log" | tail -1 | grep -o ', [0-9.]* s' | grep -o '[0-9.]*'
}

# The table is a file that check appends to.
printf '%s\n' "| model | source | bytes pushed | push (CUDA IPC) s | push (inline) s | /update_weights_from_disk s | digest equal |" \
  "|---|---|---|---|---|---|---|" > "$OUT/table.md"
# check NAME A B_NVFP4 B_BF16 INLINE: steps 1 and 2 for one model; INLINE=1 also pushes B-NVFP4 inline.
check() {
  local name=$1 a=$2 b=$3 b_bf16=$4 inline=$5 ok=0
  serve "${name}_fresh_b" "$b" || return 1
  local digest_b logprobs_b disk_b disk_bf16 digest_bf16
  digest_b=$(digest)
  logprobs_b=$(logprobs)
  stop
  serve "${name}_disk" "$a" || return 1
  disk_bf16=$(reload_seconds "$b_bf16") || ok=1
  digest_bf16=$(digest)
  disk_b=$(reload_seconds "$b") || ok=1
  [ "$(digest)" = "$digest_b" ] || { echo "$name: disk reload of B does not give B's digest"; ok=1; }
  stop
  echo "$name: digest of B $digest_b, of A reloaded from B-bf16 $digest_bf16"

  serve "${name}_push" "$a" || return 1
  local push_bf16 push_b push_inline="-" same_bf16 same_b
  push_bf16=$(push "$b_bf16" cuda "${name}_bf16") || ok=1
  same_bf16=$([ "$(digest)" = "$digest_bf16" ] && echo yes || echo NO)
  push_b=$(push "$b" cuda "${name}_nvfp4") || ok=1
  same_b=$([ "$(digest)" = "$digest_b" ] && echo yes || echo NO)
  if [ "$inline" = 1 ]; then
    push_inline=$(push "$b" cpu "${name}_inline") || ok=1
    [ "$(digest)" = "$digest_b" ] || { echo "$name: inline push of B does not give B's digest"; ok=1; }
    if [ "$(logprobs)" = "$logprobs_b" ]; then
      echo "$name: greedy logprobs after the pushes bitwise equal a fresh server on B"
    else
      echo "$name: greedy logprobs after the pushes MISMATCH a fresh server on B"; ok=1
    fi
  fi
  stop
  local bytes_bf16 bytes_b
  bytes_bf16=$(du -sb --apparent-size "$b_bf16"/*.safetensors | awk '{s += $1} END {print s}')
  bytes_b=$(du -sb --apparent-size "$b"/*.safetensors | awk '{s += $1} END {print s}')
  echo "| $name | bf16 (quantized online) | $bytes_bf16 | $push_bf16 | - | $disk_bf16 | $same_bf16 |" >> "$OUT/table.md"
  echo "| $name | NVFP4 | $bytes_b | $push_b | $push_inline | $disk_b | $same_b |" >> "$OUT/table.md"
  echo "$name: push of B-bf16 via CUDA IPC: digest equal to the disk reload: $same_bf16"
  echo "$name: push of B-NVFP4 via CUDA IPC: digest equal to a server on B: $same_b"
  [ "$same_bf16" = yes ] && [ "$same_b" = yes ] && return $ok
  return 1
}

check demo models/qwen3-moe-arith-a-nvfp4 models/qwen3-moe-arith-b-nvfp4 models/qwen3-moe-arith-b-bf16 1 \
  > "$OUT/logs/demo.log" 2>&1
record "bundled model: pushes (IPC, inline) equal disk, bitwise" "$?"
cat "$OUT/logs/demo.log"

layers=${SYNTH_LAYERS:-2}
if [ "$layers" -gt 0 ]; then
  q30=/tmp/fp4serve-q30
  rm -rf "$q30" && mkdir -p "$q30"
  # A and B: two seeds of the same shapes in NVFP4 (synth --format nvfp4: the bytes of quantize), B also in bf16.
  synth() { timeout 180 "$bin" synth --preset qwen3-30b-a3b --layers "$layers" "$@"; }
  { synth --seed 1 --format nvfp4 --out "$q30/a" && synth --seed 2 --format nvfp4 --out "$q30/b" &&
    synth --seed 2 --out "$q30/b-bf16"; } > "$OUT/logs/synth.log" 2>&1
  record "synth qwen3-30b-a3b ($layers layers): A, B in NVFP4, B in bf16" "$?"
  check "qwen3-30b-a3b-${layers}l" "$q30/a" "$q30/b" "$q30/b-bf16" 0 > "$OUT/logs/q30.log" 2>&1
  record "qwen3-30b-a3b ($layers layers): pushes equal disk, bitwise" "$?"
  cat "$OUT/logs/q30.log"
  rm -rf "$q30"
fi

{
  echo "== update_from_tensor.sh: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) =="
  printf '%s\n' "${summary[@]}"
  grep -hE "digest|bitwise|MISMATCH|does not" "$OUT/logs/demo.log" "$OUT/logs/q30.log" 2> /dev/null
  cat "$OUT/table.md"
} | tee "$OUT/summary.txt"
tar -cf "$OUT/logs.tar" -C "$OUT" logs && rm -rf "$OUT/logs"
! grep -qvE "exit 0$" <(printf '%s\n' "${summary[@]}")
