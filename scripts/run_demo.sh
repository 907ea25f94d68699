#!/usr/bin/env bash
# The main job on the bundled model: describe it, check the loaded weights against the files (digest), generate,
# then hot-reload a second checkpoint into the same parameters and generate again.
set -euo pipefail
bin=${1:-build/fp4serve}
model=models/qwen3-moe-tiny-nvfp4
other=models/qwen3-moe-tiny-nvfp4-b

echo "== fp4serve inspect $model (first lines)"
"$bin" inspect "$model" | sed -n 1,12p  # sed reads everything: no SIGPIPE under pipefail
echo
echo "== fp4serve digest --load: the weights the model holds (layouts inverted) equal the files"
"$bin" digest --load --moe-backend trtllm "$model"
echo
echo "== fp4serve generate (greedy, NVFP4 weights, per-token NVFP4 activations)"
"$bin" generate --model-path "$model" --prompt "The answer is" --max-new-tokens 12 --temperature 0 \
  --act-quant per-token --logprobs --json
echo
echo "== hot reload of $other into the running model: see tests/reload and, over HTTP, fp4serve serve"
"$bin" digest --load "$other"
