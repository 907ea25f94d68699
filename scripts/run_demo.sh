#!/usr/bin/env bash
# The main job on the bundled model: describe it, check the loaded weights against the files (digest), generate,
# then serve it over HTTP and hot-reload a second checkpoint into the same parameters while it runs.
set -euo pipefail
bin=${1:-build/fp4serve}
model=models/qwen3-moe-tiny-nvfp4
other=models/qwen3-moe-tiny-nvfp4-b
port=${FP4SERVE_DEMO_PORT:-30000}
log=$(mktemp)

echo "== fp4serve inspect $model (first lines)"
"$bin" inspect "$model" | sed -n 1,12p  # sed reads everything: no SIGPIPE under pipefail
echo
echo "== fp4serve digest --load: the weights the model holds (layouts inverted) equal the files"
"$bin" digest --load --moe-backend trtllm "$model"
echo
echo "== fp4serve generate (greedy, NVFP4 weights and activations, calibrated static input scales)"
"$bin" generate --model-path "$model" --prompt "The answer is" --max-new-tokens 12 --temperature 0 \
  --logprobs --json
echo
echo "== fp4serve serve on 127.0.0.1:$port, then a hot reload over HTTP"
OMP_WAIT_POLICY=passive "$bin" serve --model-path "$model" --port "$port" > "$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.1; done
ask() {
  curl -sf "http://127.0.0.1:$port/generate" -H 'Content-Type: application/json' \
    -d '{"text": "The answer is", "sampling_params": {"max_new_tokens": 8, "temperature": 0}}'
  echo
}
ask
curl -sf "http://127.0.0.1:$port/update_weights_from_disk" -H 'Content-Type: application/json' \
  -d "{\"model_path\": \"$other\", \"weight_version\": \"b\"}"
echo
ask
