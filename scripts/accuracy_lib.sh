# Sourced by the accuracy bench scripts: start and stop `fp4serve serve` on a free port, print bench_accuracy's
# table. Needs $build (the build directory) and $n (questions, 0: all); sets $server (pid) and $port. One server at
# a time; the caller's EXIT trap calls stop_server and removes $serve_log.
server= port=
serve_log=$(mktemp)

start_server() {  # start_server MODEL [serve flags...]: returns once the server listens (its log names the port)
  local model=$1
  shift
  : > "$serve_log"
  OMP_WAIT_POLICY=passive "$build/fp4serve" serve --model-path "$model" --port 0 "$@" > "$serve_log" 2>&1 &
  server=$! port=
  for _ in $(seq 1 300); do
    port=$(sed -n 's#.*listening on http://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$serve_log" | head -1)
    [ -n "$port" ] && return
    sleep 0.1
  done
  cat "$serve_log"
  exit 1
}

stop_server() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true; fi
  server=
}

table_header() {
  echo "| label | n | accuracy | invalid | failed | latency mean s | p50 | p90 | max | output tokens | wall s |" \
    "out tok/s |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
}

measure() {  # measure LABEL [bench_accuracy flags...]: the table row of the held-out questions on the running server
  local label=$1
  shift
  "$build/bench/bench_accuracy" --port "$port" --questions models/arith-heldout.jsonl --n "$n" --label "$label" "$@" |
    tail -1
}
