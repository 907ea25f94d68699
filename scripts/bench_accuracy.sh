#!/usr/bin/env bash
# The accuracy table of bench/RESULTS.md: bench_accuracy against `fp4serve serve` on the CPU for a bf16 checkpoint
# and its NVFP4 quantization under every act-quant mode and both MoE layouts, one fresh server per row.
#   scripts/bench_accuracy.sh BF16_DIR NVFP4_DIR [N] [BUILD_DIR]     (N held-out questions, default all)
# With ANSWERS_DIR set, every row's answers go to ANSWERS_DIR/<label>.jsonl for a question-by-question comparison.
set -euo pipefail
bf16=$1 nvfp4=$2 n=${3:-0} build=${4:-build}
source "$(dirname "$0")/accuracy_lib.sh"
trap 'stop_server; rm -f "$serve_log"' EXIT

row() {  # row LABEL MODEL [serve flags...]: start a server, print bench_accuracy's table row, stop the server
  local label=$1 model=$2
  shift 2
  start_server "$model" "$@"
  local answers=()
  [ -n "${ANSWERS_DIR:-}" ] && answers=(--answers-out "$ANSWERS_DIR/${label//[ ,]/_}.jsonl")
  measure "$label" "${answers[@]}"
  stop_server
}

table_header
row "bf16" "$bf16"
for layout in cutlass trtllm; do
  for act in none static per-token; do
    row "NVFP4 $layout, act-quant $act" "$nvfp4" --moe-backend "$layout" --act-quant "$act"
  done
done
