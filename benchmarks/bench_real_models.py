"""Kiln against onnxruntime on the CPU, on the pre-trained models of tests/real_models/registry.py.

    python benchmarks/bench_real_models.py [--threads 2] [--blocks 5] [--iters 20] [--models a,b]

Each model is built (fp32, CPU, default level, the registry's profile) and run at the registry's first shape.
Both runtimes get the same thread count (torch.set_num_threads, ORT intra_op_num_threads; ORT inter-op 1).
They are timed in alternating blocks of ``--iters`` calls, with a short pause at each switch (a thread pool
keeps spinning for a while after its last run and would steal the other's cores); a block's time is its mean
per call, the table shows the median over blocks. ``max err`` is Kiln's normalized error against ORT.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import kiln  # noqa: E402 - before torch: the CPU pool's wait policy (kiln/threads.py)
import torch  # noqa: E402

from real_models.registry import MODELS, ModelUnavailable, fetch, make_inputs  # noqa: E402

PAUSE_S = 0.2


def block_ms(fn, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1000 / iters


def bench(row, threads: int, blocks: int, iters: int) -> dict:
    path = str(fetch(row))
    case = row.cases[0]
    feeds = make_inputs(row, case)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    profiles = (kiln.Profile.of(**row.profile),) if row.profile else ()
    t0 = time.perf_counter()
    engine = kiln.build(path, kiln.BuilderConfig(device="cpu", profiles=profiles))
    build_s = time.perf_counter() - t0
    ctx = engine.create_execution_context()
    names = [o.name for o in sess.get_outputs()]
    want, got = sess.run(names, feeds), ctx.infer(feeds)
    err = max(float(np.abs(np.asarray(got[n], dtype=np.float64) - w).max() / max(float(np.abs(w).max()), 1e-3))
              for n, w in zip(names, want))
    run_ort, run_kiln = (lambda: sess.run(names, feeds)), (lambda: ctx.infer(feeds))
    for fn in (run_ort, run_kiln):  # warm-up
        block_ms(fn, max(2, iters // 4))
    times = {"ort": [], "kiln": []}
    for _ in range(blocks):
        for key, fn in (("ort", run_ort), ("kiln", run_kiln)):
            time.sleep(PAUSE_S)
            times[key].append(block_ms(fn, iters))
    o, k = statistics.median(times["ort"]), statistics.median(times["kiln"])
    return {"model": row.name, "shape": case.label, "ort_ms": o, "kiln_ms": k, "ratio": k / o, "err": err,
            "build_s": build_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--models", default="", help="comma-separated registry names (default: all)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    chosen = [r for r in MODELS if not a.models or r.name in a.models.split(",")]
    print(f"threads {a.threads}, {a.blocks} blocks x {a.iters} calls, median of block means; "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"| {'model':18s} | {'shape':40s} | {'ORT ms':>8s} | {'Kiln ms':>8s} | {'Kiln/ORT':>8s} | "
          f"{'max err':>8s} | {'build s':>7s} |")
    print(f"|{'-' * 20}|{'-' * 42}|{'-' * 10}:|{'-' * 10}:|{'-' * 10}:|{'-' * 10}:|{'-' * 9}:|")
    for row in chosen:
        try:
            r = bench(row, a.threads, a.blocks, a.iters)
        except ModelUnavailable as e:
            print(f"| {row.name:18s} | skipped: {e}")
            continue
        print(f"| {r['model']:18s} | {r['shape']:40s} | {r['ort_ms']:8.3f} | {r['kiln_ms']:8.3f} | "
              f"{r['ratio']:8.2f} | {r['err']:8.1e} | {r['build_s']:7.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
