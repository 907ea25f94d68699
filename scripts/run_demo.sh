#!/usr/bin/env bash
# The main job on the bundled trained demo pair (models/README.md): describe step A, check the loaded weights
# against the files (digest), answer a held-out arithmetic question, then serve A over HTTP, ask the question,
# hot-reload step B into the same parameters and ask again (meta_info.weight_version names the weights that answered).
set -euo pipefail
# Spinning OpenMP workers make every step slow on a loaded machine (generate took 15 s instead of 0.1 s here).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
bin=${1:-build/fp4serve}
model=${FP4SERVE_DEMO_MODEL:-models/qwen3-moe-arith-a-nvfp4}
other=${FP4SERVE_DEMO_RELOAD_MODEL:-models/qwen3-moe-arith-b-nvfp4}
port=${FP4SERVE_DEMO_PORT:-30000}
log=$(mktemp)
# Held-out question 13 (models/arith-heldout.jsonl; reference answer 80), as the chat template renders a user
# turn: the demo model was trained on exactly this ChatML layout. Step A adds wrongly (49+31=70), step B does not.
question="Nico owns 41 cards. Then Nico buys 8 more cards. Nico finds 31 more cards. How many cards does Nico have now?"
prompt="<|im_start|>user"$'\n'"$question<|im_end|>"$'\n'"<|im_start|>assistant"$'\n'
json_prompt="<|im_start|>user\\n$question<|im_end|>\\n<|im_start|>assistant\\n"  # the question has no \" or \\

echo "== fp4serve inspect $model (first lines)"
"$bin" inspect "$model" | sed -n 1,12p  # sed reads everything: no SIGPIPE under pipefail
echo
echo "== fp4serve digest --load: the weights the model holds (layouts inverted) equal the files"
"$bin" digest --load --moe-backend trtllm "$model"
echo
echo "== fp4serve generate (greedy, NVFP4 weights and activations, calibrated static input scales)"
echo "Q: $question"
"$bin" generate --model-path "$model" --prompt "$prompt" --max-new-tokens 64 --temperature 0
echo
echo "== fp4serve serve on 127.0.0.1:$port, then a hot reload over HTTP"
"$bin" serve --model-path "$model" --port "$port" > "$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.1; done
body="{\"text\": \"$json_prompt\", \"sampling_params\": {\"max_new_tokens\": 64, \"temperature\": 0}}"
ask() {
  curl -sf "http://127.0.0.1:$port/generate" -H 'Content-Type: application/json' -d "$body"
  echo
}
ask
curl -sf "http://127.0.0.1:$port/update_weights_from_disk" -H 'Content-Type: application/json' \
  -d "{\"model_path\": \"$other\", \"weight_version\": \"b\"}"
echo
ask
