#!/usr/bin/env bash
# The GPU benchmark: Kiln vs PyTorch eager vs torch.compile (reduce-overhead), fp32 and fp16, one run.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}
mkdir -p "$OUT"
python3 benchmarks/run.py --device cuda --models "${MODELS:-resnet50,bert_base}" --batches "${BATCHES:-1,8}" \
  --json "$OUT/bench_fp32.json" 2>&1 | grep -v Warning | tee "$OUT/bench_fp32.txt" | tail -8
python3 benchmarks/run.py --device cuda --fp16 --models "${MODELS:-resnet50,bert_base}" --batches "${BATCHES:-1,8}" \
  --json "$OUT/bench_fp16.json" 2>&1 | grep -v Warning | tee "$OUT/bench_fp16.txt" | tail -8
