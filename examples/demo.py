"""Kiln's main job on the bundled example: parse, build an engine, save and load it, run it, check it
against onnxruntime, and time it. Uses the GPU when there is one (``--device`` to choose)."""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import kiln  # before torch: kiln sets the CPU pool's wait policy before torch starts it (kiln/threads.py)
import torch

HERE = Path(__file__).resolve().parent


def median_ms(fn, warmup: int = 3, iters: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=str(HERE / "tiny_resnet.onnx"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--fp16", action="store_true")
    args = ap.parse_args(argv)

    graph = kiln.parse(args.model)
    print(f"parsed {args.model}: {len(graph.nodes)} nodes, inputs "
          f"{[(v.name, str(v.type)) for v in graph.inputs]}")
    name = graph.inputs[0].name
    shape = [d if isinstance(d, int) else args.batch for d in graph.inputs[0].shape]
    lo, hi = [1] + shape[1:], [max(32, args.batch)] + shape[1:]
    config = kiln.BuilderConfig(device=args.device, fp16=args.fp16,
                                profiles=(kiln.Profile.of(**{name: (lo, shape, hi)}),))
    engine = kiln.build(args.model, config)
    print(f"\nbuilt for {args.device}:\n{engine.report.summary()}\n")
    print(engine.report.layer_table())

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.engine"
        engine.save(path)
        print(f"\nsaved engine: {path.stat().st_size / 1e6:.2f} MB; loading it back")
        engine = kiln.Engine.load(path)

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ctx = engine.create_execution_context()
    got = ctx.infer({name: x})
    import onnxruntime as ort
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {name: x})
    tol = 3e-2 if args.fp16 else 1e-3
    ok = True
    for (out_name, out), r in zip(got.items(), ref):
        err = float(np.abs(out - r).max())
        ok &= bool(np.allclose(out, r, rtol=tol, atol=tol))
        print(f"output {out_name}: shape {list(out.shape)}, max |kiln - onnxruntime| = {err:.2e}")

    xt = torch.from_numpy(x).to(args.device)
    kiln_ms = median_ms(lambda: (ctx.infer({name: xt}), torch.cuda.synchronize() if args.device != "cpu" else None))
    ort_ms = median_ms(lambda: sess.run(None, {name: x}))
    interp_ms = median_ms(lambda: kiln.interpret(graph, {name: x}), warmup=1, iters=3)
    print(f"\nmedian latency, batch {args.batch} ({args.device}): kiln engine {kiln_ms:.2f} ms | "
          f"onnxruntime (CPU) {ort_ms:.2f} ms | kiln interpreter {interp_ms:.2f} ms")
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
