#!/usr/bin/env bash
# GPU validation on a CUDA machine, using that machine's torch (nothing is installed): the node suite and
# the model tests with CUDA tensors, and the GPU runtime tests. Writes logs under $OUT (default ./out).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}
mkdir -p "$OUT"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 tests/conformance/node_suite.py --device cuda > "$OUT/node_suite_cuda.txt" 2>&1
grep -E "^FAIL" "$OUT/node_suite_cuda.txt" | head -20
tail -2 "$OUT/node_suite_cuda.txt"
KILN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/models tests/gpu tests/engine "$@" 2>&1 \
  | tee "$OUT/pytest_cuda.txt" | tail -15
