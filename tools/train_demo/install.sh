#!/usr/bin/env bash
# After scripts/device/train_demo.sh: turn what came back from the device (DEVICE_OUT holds step_a.tar, step_b.tar,
# summary.json, tokenizer_check.jsonl) into the bundled demo models: both steps quantized to NVFP4 with input
# scales calibrated on whole chat turns of the training distribution, step B also kept in bf16 (the online-
# quantization reload test loads it), HF's token ids for the tokenizer test, and the training summary without the
# per-question answers.
#   tools/train_demo/install.sh DEVICE_OUT [BUILD_DIR]     (run from the repository root; needs python3)
set -euo pipefail
device_out=$1
bin=${2:-build}/fp4serve
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for step in step_a step_b; do tar -xf "$device_out/$step.tar" -C "$work"; done
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
"$bin" quantize --in "$work/step_a" --out models/qwen3-moe-arith-a-nvfp4 --calib-prompts models/arith-calibration.jsonl
"$bin" quantize --in "$work/step_b" --out models/qwen3-moe-arith-b-nvfp4 --calib-prompts models/arith-calibration.jsonl
cp -r "$work/step_b" models/qwen3-moe-arith-b-bf16
cp "$device_out/tokenizer_check.jsonl" models/arith-tokenizer-check.jsonl  # HF's ids, for tests/tokenizer
python3 - "$device_out/summary.json" > models/arith-training.json <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
for step in summary["checkpoints"].values():
    step.pop("answers")
print(json.dumps(summary, indent=1))
PY
du -sh models/qwen3-moe-arith-*
