#!/usr/bin/env bash
# The reliability checks that need a GPU (issue 15), on a CUDA machine with that machine's torch: the GPU
# reliability tests, the engine/NaN/accuracy tests with CUDA tensors, and the real-model set in fp32 and fp16.
# The GPU machine has no package index: copy the extracted real models first, e.g.
#   mkdir -p .device_carry && cp -r ~/.cache/kiln-test-models/models .device_carry/   (then carry .device_carry)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 KILN_MODEL_CACHE=${KILN_MODEL_CACHE:-$PWD/.device_carry}
OUT=${OUT:-out}
mkdir -p "$OUT"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/gpu/test_reliability_gpu.py 2>&1 | tee "$OUT/reliability_gpu.txt" | tail -15
KILN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/engine/test_nan_inf.py \
  tests/engine/test_shared_weights.py tests/engine/test_output_buffers.py tests/quant/test_default_accuracy_check.py \
  tests/models/test_exported.py 2>&1 | tee "$OUT/engine_cuda.txt" | tail -15
python3 benchmarks/gpu_real_models.py --json "$OUT/real_models_gpu.json" 2>&1 | grep -v Warning \
  | tee "$OUT/real_models_gpu.txt" | tail -25
