"""BERT-base as exported, and after onnxruntime's transformer optimizer (com.microsoft fused ops), in Kiln and in
onnxruntime on the CPU (issue 19's bar: Kiln on the optimized model within 5% of Kiln on the plain export).

    python benchmarks/bench_contrib.py [--threads 2] [--blocks 7] [--block-s 1.0] [--seq 128] [--layers 12]

BERT-base has random weights (transformers' default BertConfig), batch 1, sequence ``--seq``. The optimized
model comes from ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")``; Kiln builds it with
its ``lower_contrib_ms`` pass turning the contrib ops back into Kiln's layers. The four runs are timed in
blocks of ``--block-s`` seconds, one after another with a pause at each switch (a thread pool keeps spinning
for a while after its run), ``--blocks`` times over; the table gives each run's median block latency (ms), its
ratio to Kiln on the plain export, and its largest error against onnxruntime on the plain export.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import kiln  # noqa: E402 - before torch: the CPU pool's wait policy (kiln/threads.py)
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from cpu_timing import block_ms, max_rel_error  # noqa: E402

PAUSE_S = 0.3


def _export(tmp: Path, seq: int, layers: int) -> tuple[Path, Path, dict]:
    import models
    from onnxruntime.transformers.optimizer import optimize_model
    torch.manual_seed(0)
    model, sample, axes = models.bert(num_hidden_layers=layers)
    inputs = sample(1, seq, torch.Generator().manual_seed(0))
    plain = tmp / "bert.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models.export_onnx(model, inputs, plain, axes)
        optimized = tmp / "bert_optimized.onnx"
        optimize_model(str(plain), model_type="bert", num_heads=12, hidden_size=768).save_model_to_file(str(optimized))
    return plain, optimized, {n: t.numpy() for n, t in zip(axes, inputs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--block-s", type=float, default=1.0)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layers", type=int, default=12)
    a = p.parse_args()
    kiln.set_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        plain, optimized, feeds = _export(Path(tmp), a.seq, a.layers)
        profile = kiln.Profile.of(**{k: (v.shape,) * 3 for k, v in feeds.items()})
        runs, outs = {}, {}
        for label, path in (("kiln plain", plain), ("kiln optimized", optimized)):
            t0 = time.perf_counter()
            engine = kiln.build(str(path), kiln.BuilderConfig(device="cpu", profiles=(profile,)))
            lowered = {k: v for k, v in engine.report.fusions.items() if k.startswith("lower_contrib_ms")}
            print(f"{label}: built in {time.perf_counter() - t0:.1f}s; lowered: {lowered or 'nothing'}")
            ctx = engine.create_execution_context()
            runs[label] = lambda ctx=ctx: ctx.infer(feeds)
            outs[label] = lambda ctx=ctx: list(ctx.infer(feeds).values())
        for label, path in (("ort plain", plain), ("ort optimized", optimized)):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = a.threads, 1, 3
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            runs[label] = lambda sess=sess: sess.run(None, feeds)
            outs[label] = runs[label]
        want = runs["ort plain"]()
        errs = {k: max_rel_error(fn(), want) for k, fn in outs.items()}
        for fn in runs.values():  # warm-up
            block_ms(fn, 0.5)
        times = {k: [] for k in runs}
        for _ in range(a.blocks):
            for key, fn in runs.items():
                time.sleep(PAUSE_S)
                times[key].append(block_ms(fn, a.block_s))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["kiln plain"]
    print(f"\nBERT-base ({a.layers} layers, random weights), batch 1, seq {a.seq}, {a.threads} threads, "
          f"{a.blocks} blocks of {a.block_s}s; median block latency")
    print("| run            | ms      | / kiln plain | err vs ort plain |")
    print("|----------------|--------:|-------------:|-----------------:|")
    for k in runs:
        print(f"| {k:14s} | {med[k]:7.2f} | {med[k] / base:12.3f} | {errs[k]:16.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
