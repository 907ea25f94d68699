#!/usr/bin/env bash
# The reload demo measured on all held-out questions (bench/RESULTS.md): a server on step A, then
# /update_weights_from_disk to step B, then back to A, bench_accuracy after each; B's answers are compared with a
# fresh server on B and the last ones with A's first, question by question. Two legs: B as NVFP4 (act-quant
# static) and B as bf16 quantized online (act-quant per-token: it ignores the input scales an online reload keeps).
#   scripts/bench_reload_accuracy.sh A_NVFP4 B_NVFP4 B_BF16 [N] [BUILD_DIR]
set -euo pipefail
model_a=$1 model_b=$2 model_b_bf16=$3 n=${4:-0} build=${5:-build}
source "$(dirname "$0")/accuracy_lib.sh"
answers=$(mktemp -d)
summary=()
trap 'stop_server; rm -rf "$serve_log" "$answers"' EXIT

measure_keep() {  # measure_keep LABEL: the table row, answers kept in $answers/LABEL
  measure "$1" --answers-out "$answers/$1"
}

reload() {  # reload DIR VERSION
  curl -sf "http://127.0.0.1:$port/update_weights_from_disk" -H 'Content-Type: application/json' \
    -d "{\"model_path\": \"$1\", \"weight_version\": \"$2\"}" > /dev/null
}

differing() {  # differing LABEL1 LABEL2: how many questions got different answers (lines are in question order)
  diff --old-line-format='x
' --new-line-format= --unchanged-line-format= "$answers/$1" "$answers/$2" | wc -l
}

leg() {  # leg NAME B_DIR ACT_QUANT
  local name=$1 b=$2 act=$3
  start_server "$model_b" --act-quant "$act"
  measure_keep "fresh B, act-quant $act"
  stop_server
  start_server "$model_a" --act-quant "$act"
  measure_keep "A, act-quant $act"
  reload "$b" b
  measure_keep "A -> $name"
  reload "$model_a" a-again
  measure_keep "A -> $name -> A"
  stop_server
  summary+=("$name: $(differing "A -> $name" "fresh B, act-quant $act") answers after A -> $name differ from a \
fresh server on B's; $(differing "A -> $name -> A" "A, act-quant $act") after the reload back differ from A's")
}

table_header
leg "B NVFP4" "$model_b" static
leg "B bf16 (online NVFP4)" "$model_b_bf16" per-token
echo
printf '%s\n' "${summary[@]}"
