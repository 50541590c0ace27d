#!/usr/bin/env bash
# The GPU checks still owed by open issues, most important first, each under its own time limit so one slow
# step cannot eat the device call (carry .device_carry for the real models). Logs under $OUT (default ./out).
#   15/22: GPU reliability tests, kiln.trt's sample-style tests with CUDA buffers, the real-model set (silero's
#          CUDA-graph capture); 19: the INT4 GEMM bar; 20: int8 refit on the GPU (fp32/fp16 shown on the H100).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 KILN_MODEL_CACHE=${KILN_MODEL_CACHE:-$PWD/.device_carry}
OUT=${OUT:-out}
mkdir -p "$OUT"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/card.txt"
step() {  # step NAME SECONDS COMMAND...: run it with a limit, keep its log, print its tail
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; echo "rc=$?" >> "$OUT/$name.txt"
  grep -v Warning "$OUT/$name.txt" | tail -${TAIL:-12}
}
step reliability_gpu 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_reliability_gpu.py
step trt_cuda 150 env KILN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/engine/test_trt_api.py \
  tests/engine/test_trt_interfaces.py tests/engine/test_portable.py tests/engine/test_trt_network.py \
  tests/engine/test_trt_debug.py tests/engine/test_concurrent_control_flow.py
step int4 90 python3 benchmarks/bench_int4.py
step real_models 200 python3 benchmarks/gpu_real_models.py --json "$OUT/real_models_gpu.json"
step refit 150 python3 benchmarks/bench_refit.py --device cuda --precisions int8 --out "$OUT/refit_gpu.json"
