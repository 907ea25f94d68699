#!/usr/bin/env bash
# libFuzzer runs of every target in fuzz/ (ASan + UBSan, clang):
#   bash scripts/fuzz.sh SECONDS [TARGET...]   fuzz each target for SECONDS (niced, JOBS at a time, default 2),
#                                              then print target, seconds, execs, corpus size, findings
#   bash scripts/fuzz.sh --replay [TARGET...]  run each target once over its seed corpus (CI)
# BUILD (default build-fuzz) is configured by scripts/sanitized_tree.sh when it has no build.ninja yet. New corpus
# inputs go to BUILD/fuzz-runs/corpus/TARGET (the table's corpus column: libFuzzer's inputs/bytes at the end), findings
# (crash-*, leak-*, timeout-*, oom-*) to BUILD/fuzz-runs/findings/TARGET: once fixed, add the input to
# fuzz/corpus/TARGET and a unit test. Exits non-zero when any target had a finding.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/fuzz.sh SECONDS|--replay [TARGET...]"
mode=${1:?$usage}
shift
build=${BUILD:-build-fuzz}
jobs=${JOBS:-2}
[ -f "$build/build.ninja" ] || bash scripts/sanitized_tree.sh "$build"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for source in fuzz/*_fuzzer.cpp; do
    name=$(basename "$source" _fuzzer.cpp)
    targets+=("$name")
  done
fi
ninja -C "$build" "${targets[@]/#/fuzz_}" > /dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

# libFuzzer takes one dictionary: the JSON syntax one for targets that read JSON, plus the target's own words.
dictionary_for() {
  local name=$1 dict="$build/fuzz-runs/$1.dict"
  : > "$dict"
  case $name in safetensors | tokenizer_encode) ;; *) cat fuzz/json.dict >> "$dict" ;; esac
  if [ -f "fuzz/$name.dict" ]; then cat "fuzz/$name.dict" >> "$dict"; fi
  if [ -s "$dict" ]; then echo "$dict"; fi
}

mkdir -p "$build/fuzz-runs"
if [ "$mode" = --replay ]; then
  for name in "${targets[@]}"; do
    start_ns=$(date +%s%N)
    "$build/fuzz/fuzz_$name" -runs=1 "fuzz/corpus/$name"/* > "$build/fuzz-runs/replay-$name.log" 2>&1 ||
      { cat "$build/fuzz-runs/replay-$name.log"; echo "fuzz replay: $name FAILED"; exit 1; }
    printf 'fuzz replay: %-24s %3d seeds  %5d ms\n' "$name" "$(ls "fuzz/corpus/$name" | wc -l)" \
      $((($(date +%s%N) - start_ns) / 1000000))
  done
  exit 0
fi

[[ "$mode" =~ ^[0-9]+$ ]] || { echo "$usage" >&2; exit 2; }
seconds=$mode
run_one() {
  local name=$1
  local corpus="$build/fuzz-runs/corpus/$name" findings="$build/fuzz-runs/findings/$name"
  mkdir -p "$corpus" "$findings"
  local dict
  dict=$(dictionary_for "$name")
  nice -n 10 "$build/fuzz/fuzz_$name" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    ${dict:+-dict="$dict"} -artifact_prefix="$findings/" "$corpus" "fuzz/corpus/$name" \
    > "$build/fuzz-runs/$name.log" 2>&1 || true
}
running=0
for name in "${targets[@]}"; do
  run_one "$name" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

status=0
printf '%-24s %8s %12s %12s %9s\n' target seconds execs corpus findings
for name in "${targets[@]}"; do
  log="$build/fuzz-runs/$name.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  run_seconds=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  corpus_size=$( (grep -o 'corp: [0-9]*/[0-9a-zA-Z]*' "$log" || true) | tail -1 | cut -d' ' -f2)
  found=$(find "$build/fuzz-runs/findings/$name" -type f | wc -l)
  [ "$found" -eq 0 ] && [ -n "$execs" ] || status=1
  printf '%-24s %8s %12s %12s %9s\n' "$name" "${run_seconds:-?}" "${execs:-?}" "${corpus_size:-?}" "$found"
done
[ "$status" -eq 0 ] || echo "fuzz: findings or a failed run; see $build/fuzz-runs/*.log and $build/fuzz-runs/findings/"
exit "$status"
