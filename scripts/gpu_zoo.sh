#!/usr/bin/env bash
# Issue 18's GPU model zoo (benchmarks/zoo.py): Kiln fp16 vs eager vs torch.compile (reduce-overhead) at batch 1 and
# each model's large batch, builds cold and warm (timing cache). The whole zoo takes longer than one device call:
# pick models with ZOO_MODELS=a,b,c (names from `python benchmarks/zoo.py`). Rows are saved as they come.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}
mkdir -p "$OUT"
python3 benchmarks/zoo.py
python3 benchmarks/run.py --device cuda --fp16 --suite zoo --timing-cache --iters "${ITERS:-30}" \
  ${ZOO_MODELS:+--zoo-models "$ZOO_MODELS"} ${BATCHES:+--batches "$BATCHES"} --json "$OUT/zoo_fp16.json" 2>&1 \
  | grep -v Warning | tee "$OUT/zoo_fp16.txt" | grep -v '^{' | tail -40
