#!/usr/bin/env bash
# On the GPU device machine, from the repository root: train the bundled demo model (tools/train_demo/train.py)
# under a hard wall-clock cap and put into $OUT what comes back (at most 8 files, so checkpoints travel as tars):
# step_a.tar and step_b.tar (bf16 HF checkpoints), summary.json (loss curve, held-out accuracy and answers of both
# steps), heldout.jsonl, tokenizer_check.jsonl, train.log. TRAIN_SECONDS sets the training budget; the first
# --smoke-seconds of it end in a full export/check/eval of a smoke checkpoint, so a bug fails within a minute.
set -uo pipefail
OUT=${OUT:-/tmp/train-demo-out}
WORK=${WORK:-/tmp/train-demo}
TRAIN_SECONDS=${TRAIN_SECONDS:-280}
CAP_SECONDS=${CAP_SECONDS:-440}  # everything: corpus, tokenizer, training, exports, evaluations
mkdir -p "$OUT" && rm -rf "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/train.log"
PYTHONUNBUFFERED=1 timeout --signal=INT --kill-after=10 "$CAP_SECONDS" \
  python3 tools/train_demo/train.py --out "$WORK" --train-seconds "$TRAIN_SECONDS" 2>&1 | tee -a "$OUT/train.log"
status=${PIPESTATUS[0]}
for step in step_a step_b; do
  [ -f "$WORK/$step/model.safetensors" ] && tar -cf "$OUT/$step.tar" -C "$WORK" "$step"
done
for f in summary.json heldout.jsonl tokenizer_check.jsonl; do [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/"; done
ls -l "$OUT"
exit "$status"
