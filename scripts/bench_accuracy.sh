#!/usr/bin/env bash
# The accuracy table of bench/RESULTS.md: bench_accuracy against `fp4serve serve` on the CPU for a bf16 checkpoint
# and its NVFP4 quantization under every act-quant mode and both MoE layouts, one fresh server per row.
#   scripts/bench_accuracy.sh BF16_DIR NVFP4_DIR [N] [BUILD_DIR]     (N held-out questions, default all)
set -euo pipefail
bf16=$1 nvfp4=$2 n=${3:-0} build=${4:-build}
questions=models/arith-heldout.jsonl
log=$(mktemp)
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; rm -f "$log"' EXIT

row() {  # row LABEL MODEL [serve flags...]: start a server, print bench_accuracy's table row, stop the server
  local label=$1 model=$2
  shift 2
  : > "$log"
  OMP_WAIT_POLICY=passive "$build/fp4serve" serve --model-path "$model" --port 0 "$@" > "$log" 2>&1 &
  server=$!
  local port=
  for _ in $(seq 1 300); do
    port=$(sed -n 's#.*listening on http://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$log" | head -1)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$log"; exit 1; }
  "$build/bench/bench_accuracy" --port "$port" --questions "$questions" --n "$n" --label "$label" | tail -1
  kill $server && wait $server 2>/dev/null || true
  server=
}

echo "| label | n | accuracy | invalid | failed | latency mean s | p50 | p90 | max | output tokens | wall s | out tok/s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
row "bf16" "$bf16"
for layout in cutlass trtllm; do
  for act in none static per-token; do
    row "NVFP4 $layout, act-quant $act" "$nvfp4" --moe-backend "$layout" --act-quant "$act"
  done
done
