# Sourced by the device scripts: start `fp4serve serve` on a free port and wait for it.
# serve_on_free_port BIN LOG WAIT_S ARGS...: runs `BIN serve ARGS... --port 0` with its output in LOG and waits up to
# WAIT_S seconds for the port it logs; sets SERVER_PID and SERVER_URL. Returns 1 (the server killed) if none came,
# at once if the server exits first.
serve_on_free_port() {
  local bin=$1 log=$2 wait_s=$3 port=""
  shift 3
  "$bin" serve "$@" --port 0 > "$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq $((2 * wait_s))); do
    port=$(grep -o -m1 'listening on http://[0-9.]*:[0-9]*' "$log" | sed 's/.*://')
    [ -n "$port" ] && break
    kill -0 "$SERVER_PID" 2> /dev/null || break
    sleep 0.5
  done
  [ -n "$port" ] || { kill "$SERVER_PID" 2> /dev/null; return 1; }
  SERVER_URL=http://127.0.0.1:$port
}
