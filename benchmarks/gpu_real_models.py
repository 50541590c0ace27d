"""The real-model set (tests/real_models/registry.py) on the GPU: fp32 and fp16 engines against onnxruntime.

    KILN_MODEL_CACHE=DIR python benchmarks/gpu_real_models.py [--models a,b] [--json out.json]

For every model and precision: the build (time, layers kept in higher precision by the accuracy check), every
case of the registry run through one execution context with CUDA graphs (capture failures are the context's
notes), the normalized max error against onnxruntime's CPU fp32 result (fp32 bar 1e-3, fp16 bar 2e-2, same
argmax for classifier outputs where onnxruntime's top-2 gap is over 1e-2), and the median latency of the
first case with CUDA graphs. The GPU machine has no index to fetch wheels from: fill ``KILN_MODEL_CACHE``
with the extracted models first (its ``models/`` folder, as the test set's fetch leaves it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import kiln  # noqa: E402 - before torch: the CPU pool's wait policy (kiln/threads.py)
import torch  # noqa: E402

from real_models.registry import MODELS, fetch, make_inputs  # noqa: E402

BARS = {"fp32": 1e-3, "fp16": 2e-2}


def _err(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-3)) if want.size else 0.0


def _argmax_ok(got, want) -> bool:
    want = np.asarray(want, dtype=np.float64)
    top2 = np.sort(want, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-2
    return bool((np.argmax(got, -1) == np.argmax(want, -1))[clear].all())


def run(row, precision: str) -> dict:
    path = str(fetch(row))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    profiles = (kiln.Profile.of(**row.profile),) if row.profile else ()
    t0 = time.perf_counter()
    engine = kiln.build(path, kiln.BuilderConfig(device="cuda", fp16=precision == "fp16", profiles=profiles))
    out = {"model": row.name, "precision": precision, "build_s": round(time.perf_counter() - t0, 2)}
    acc = engine.report.quantization.get("accuracy", {})
    out["kept_fp32"] = [k["layer"] for k in acc.get("kept", [])]
    ctx = engine.create_execution_context()
    worst, argmax_ok = 0.0, True
    for i, case in enumerate(row.cases):
        feeds = make_inputs(row, case, seed=i)
        want = dict(zip(names, sess.run(names, feeds)))
        got = ctx.infer(feeds)
        for n in names:
            worst = max(worst, _err(got[n], want[n]))
            if n in row.classify:
                argmax_ok &= _argmax_ok(got[n], want[n])
    out.update(max_err=worst, ok=worst <= BARS[precision] and argmax_ok, argmax_ok=argmax_ok,
               cuda_graph_notes=list(ctx.notes))
    feeds = make_inputs(row, row.cases[0])
    dev = {k: torch.from_numpy(v).cuda() for k, v in feeds.items()}
    for _ in range(5):
        ctx.infer(dev)
    torch.cuda.synchronize()
    times = []
    for _ in range(30):
        t = time.perf_counter()
        ctx.infer(dev)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    out["ms"] = round(statistics.median(times), 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="")
    ap.add_argument("--json")
    args = ap.parse_args()
    wanted = set(args.models.split(",")) - {""}
    rows, failed = [], 0
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"{'model':20s} {'prec':5s} {'build s':>8s} {'max err':>9s} {'ok':>3s} {'ms':>8s}  kept fp32 / notes")
    for row in MODELS:
        if wanted and row.name not in wanted:
            continue
        for precision in ("fp32", "fp16"):
            try:
                r = run(row, precision)
            except Exception as e:  # noqa: BLE001 - a failing model is a row of the table, with its error
                r = {"model": row.name, "precision": precision, "ok": False,
                     "error": f"{type(e).__name__}: {e}"[:400], "trace": traceback.format_exc()[-1500:]}
            rows.append(r)
            failed += not r["ok"]
            if "error" in r:
                print(f"{row.name:20s} {precision:5s} ERROR {r['error']}")
            else:
                print(f"{r['model']:20s} {precision:5s} {r['build_s']:8.2f} {r['max_err']:9.2e} "
                      f"{'yes' if r['ok'] else 'NO':>3s} {r['ms']:8.3f}  {r['kept_fp32']} {r['cuda_graph_notes']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"{len(rows) - failed} ok, {failed} not ok")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
