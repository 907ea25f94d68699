#!/usr/bin/env bash
# On the GPU device machine, from the repository root: issue 8's end-to-end numbers (and issue 14's cost table) on the
# full synthetic Qwen3-30B-A3B in NVFP4 (48 layers, ~17 GB), from binaries built on the workstation:
# `gpu_engine.sh --pack BUILD DIR` there, `e2e_30b.sh --prebuilt DIR` here (DIR carried).
#   1. synth: `fp4serve synth --format nvfp4` writes the checkpoint to this machine's disk (timed; reused when
#      E2E_MODEL_DIR already holds one);
#   2. bench_bandwidth: device-to-device, pinned and pageable host-to-device copy bandwidth;
#   3. disk read of one shard with dd, cold (after `echo 3 > /proc/sys/vm/drop_caches`, if this machine allows it:
#      logged) and from page cache;
#   4. the server: load time to "listening" from cold disk (caches dropped, when allowed) and from page cache,
#      /update_weights_from_disk of the same checkpoint (wall time, GB/s, peak extra GPU memory by nvidia-smi every
#      100 ms), one /generate;
#   5. decode tokens/s at batch 1, 16, 64, 256 (prompt 512, 256 new tokens) with CUDA graphs, each beside its floor
#      (bench_cpu_generate --floor-gbs: bytes a step reads / the device-to-device bandwidth of step 2), and prefill
#      tokens/s of one 4096-token prompt;
#   6. the same with --deterministic at batch 1, 64, 256 (issue 14's cost);
#   7. scripts/device/torch_baseline.py: the same model in bf16 through transformers, random weights on the GPU.
# Knobs (environment): E2E_SECONDS overall budget (default 470), E2E_STEPS (default "1 2 3 4 5 6 7"), E2E_LAYERS (48),
# E2E_MODEL_DIR (/tmp/fp4serve-e2e-30b), E2E_BATCHES (1,16,64,256), E2E_DET_BATCHES (1,64,256), E2E_NEW_TOKENS (256),
# E2E_LONG_PROMPT (4096), E2E_TORCH_BATCHES (1,16,64,256), E2E_TORCH_NEW_TOKENS (32), E2E_TORCH_SECONDS (150).
# Writes to $OUT: summary.md (every table) and logs.tar.
set -uo pipefail
[ "${1:-}" = "--prebuilt" ] && [ -n "${2:-}" ] || { echo "usage: $0 --prebuilt DIR (DIR from gpu_engine.sh --pack)" >&2; exit 2; }
start=$(date +%s)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/prebuilt.sh"
source "$here/serve_util.sh"
use_prebuilt "$2" || exit 1
OUT=${OUT:-/tmp/fp4serve-device-out}
mkdir -p "$OUT/logs"
deadline=$((start + ${E2E_SECONDS:-470}))
layers=${E2E_LAYERS:-48} model=${E2E_MODEL_DIR:-/tmp/fp4serve-e2e-30b} new_tokens=${E2E_NEW_TOKENS:-256}
summary="$OUT/summary.md"
stamp() { echo "[e2e_30b.sh +$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/logs/steps.log"; }
note() { echo "$*" | tee -a "$summary"; }
# Seconds left for a step: its own cap, or less when the overall deadline is nearer (at least 5).
budget() { local left=$((deadline - $(date +%s))); [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"; }
want() { [[ " ${E2E_STEPS:-1 2 3 4 5 6 7} " == *" $1 "* ]]; }
now() { date +%s.%N; }
seconds() { echo "$1 $2" | awk '{printf "%.2f", $2 - $1}'; }
gb_per_s() { echo "$1 $2" | awk '{printf "%.2f", $1 / 1e9 / $2}'; }
# Drops the page cache (needs root and a writable /proc/sys); prints whether it worked.
drop_caches() { sync; if echo 3 > /proc/sys/vm/drop_caches 2> /dev/null; then echo dropped; else echo "not dropped"; fi; }
gpu_used_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }

{
  echo "# e2e_30b.sh: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
  echo "commit $(git rev-parse --short HEAD 2> /dev/null), $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GB RAM, $(date -u +%FT%TZ)"
  df -h "$(dirname "$model")" | tail -1
} | tee "$summary"

if want 1; then
  if [ -f "$model/model.safetensors.index.json" ]; then
    note "1. synth: reusing $model"
  else
    stamp "1. synth qwen3-30b-a3b, $layers layers, NVFP4 -> $model"
    rm -rf "$model"
    t0=$(now)
    timeout "$(budget 240)" "$FP4SERVE_BIN" synth --preset qwen3-30b-a3b --layers "$layers" --format nvfp4 --seed 1 \
      --out "$model" > "$OUT/logs/synth.log" 2>&1
    status=$? t1=$(now)
    bytes=$(du -sb "$model" | cut -f1)
    note "1. synth --format nvfp4, $layers layers: exit $status, $bytes bytes in $(seconds "$t0" "$t1") s = $(gb_per_s "$bytes" "$(seconds "$t0" "$t1")") GB/s (written and synced)"
  fi
fi
[ -f "$model/model.safetensors.index.json" ] || { note "no checkpoint at $model: stopping"; tar -cf "$OUT/logs.tar" -C "$OUT" logs; exit 1; }
model_bytes=$(du -sb "$model" | cut -f1)

d2d_gbs=""
if want 2; then
  stamp "2. copy bandwidth"
  timeout "$(budget 60)" "$PREBUILT/bench_bandwidth" > "$OUT/logs/bandwidth.md" 2>&1
  tee -a "$summary" < "$OUT/logs/bandwidth.md"
  d2d_gbs=$(awk -F'|' '/device-to-device/ {gsub(/ /, "", $3); print $3}' "$OUT/logs/bandwidth.md")
fi

if want 3; then
  stamp "3. disk read"
  shard=$(ls "$model"/model-*.safetensors | head -1)
  shard_bytes=$(stat -c %s "$shard")
  dropped=$(drop_caches)
  for pass in "cold ($dropped)" "page cache"; do
    t0=$(now)
    timeout "$(budget 60)" dd if="$shard" of=/dev/null bs=16M status=none
    t1=$(now)
    note "3. disk read, $pass: $shard_bytes bytes in $(seconds "$t0" "$t1") s = $(gb_per_s "$shard_bytes" "$(seconds "$t0" "$t1")") GB/s"
  done
fi

if want 4; then
  stamp "4. server load (cold, page cache) and reload"
  server_load() {  # $1: label; starts the server, notes the time to "listening"
    local t0 t1
    t0=$(now)
    serve_on_free_port "$FP4SERVE_BIN" "$OUT/logs/serve_$2.log" "$(budget 180)" --model-path "$model" --device cuda \
      --act-quant none || { note "4. server load, $1: no server (see logs/serve_$2.log)"; return 1; }
    t1=$(now)
    note "4. server load, $1: $(seconds "$t0" "$t1") s to listening = $(gb_per_s "$model_bytes" "$(seconds "$t0" "$t1")") GB/s of checkpoint (includes CUDA init and graph capture), GPU memory used $(gpu_used_mib) MiB"
  }
  if server_load "cold disk ($(drop_caches))" cold; then
    url=$SERVER_URL
    curl -s "$url/get_server_info" > "$OUT/logs/server_info.json"
    before=$(gpu_used_mib)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/logs/reload_gpu_mib.log" &
    sampler=$!
    t0=$(now)
    curl -s -m "$(budget 120)" -X POST "$url/update_weights_from_disk" -H 'Content-Type: application/json' \
      -d "{\"model_path\": \"$model\"}" > "$OUT/logs/reload.json"
    t1=$(now)
    kill "$sampler"
    peak=$(sort -n "$OUT/logs/reload_gpu_mib.log" | tail -1)
    note "4. /update_weights_from_disk (same checkpoint, page cache): $(seconds "$t0" "$t1") s = $(gb_per_s "$model_bytes" "$(seconds "$t0" "$t1")") GB/s; GPU memory used before $before MiB, peak during $peak MiB (+$((peak - before)) MiB); answer $(head -c 300 "$OUT/logs/reload.json")"
    curl -s "$url/metrics" | grep -E "^fp4serve_weight_reload" > "$OUT/logs/reload_metrics.txt"
    curl -s -m 60 -X POST "$url/generate" -H 'Content-Type: application/json' \
      -d '{"input_ids": [3,14,15,92,65,35,89,79], "sampling_params": {"temperature": 0, "max_new_tokens": 16}}' \
      > "$OUT/logs/generate.json"
    note "4. /generate after the reload: $(head -c 200 "$OUT/logs/generate.json")"
    kill "$SERVER_PID"; wait "$SERVER_PID" 2> /dev/null
  fi
  if server_load "page cache" warm; then kill "$SERVER_PID"; wait "$SERVER_PID" 2> /dev/null; fi
fi

floor=()
[ -n "$d2d_gbs" ] && floor=(--floor-gbs "$d2d_gbs")
if want 5; then
  stamp "5. decode with CUDA graphs, prefill of a ${E2E_LONG_PROMPT:-4096}-token prompt"
  note ""
  note "## decode (prompt 512, $new_tokens new tokens, CUDA graphs) and prefill; floor = step bytes / $d2d_gbs GB/s"
  timeout "$(budget 240)" "$PREBUILT/bench_cpu_generate" --device cuda --batch "${E2E_BATCHES:-1,16,64,256}" \
    --prompt-tokens 512 --new-tokens "$new_tokens" --long-prompt-tokens "${E2E_LONG_PROMPT:-4096}" "${floor[@]}" \
    "$model" 2>> "$OUT/logs/bench.err" | tee -a "$summary"
  note "(exit ${PIPESTATUS[0]})"
fi

if want 6; then
  stamp "6. decode with --deterministic"
  note ""
  note "## decode with --deterministic (prompt 512, $new_tokens new tokens, CUDA graphs)"
  timeout "$(budget 200)" "$PREBUILT/bench_cpu_generate" --device cuda --deterministic on \
    --batch "${E2E_DET_BATCHES:-1,64,256}" --prompt-tokens 512 --new-tokens "$new_tokens" "${floor[@]}" "$model" \
    2>> "$OUT/logs/bench.err" | tee -a "$summary"
  note "(exit ${PIPESTATUS[0]})"
fi
tail -5 "$OUT/logs/bench.err" 2> /dev/null

if want 7; then
  stamp "7. PyTorch + transformers baseline, bf16"
  note ""
  timeout "$(budget "${E2E_TORCH_SECONDS:-150}")" python3 "$here/torch_baseline.py" --config "$model/config.json" \
    --batches "${E2E_TORCH_BATCHES:-1,16,64,256}" --prompt-tokens 512 --new-tokens "${E2E_TORCH_NEW_TOKENS:-32}" \
    2> "$OUT/logs/torch.err" | tee -a "$summary"
  note "(exit ${PIPESTATUS[0]})"
  tail -5 "$OUT/logs/torch.err"
fi

stamp "done"
note "e2e_30b.sh: $(( $(date +%s) - start )) s"
tar -cf "$OUT/logs.tar" -C "$OUT" logs && rm -rf "$OUT/logs"
