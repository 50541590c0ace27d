"""Per-layer times: run the engine's Program with a hook called after each step.

On CPU the gap between consecutive hook calls (perf_counter) is the step's time. On CUDA an event is
recorded at each hook call and the gaps are read after one synchronize, so profiling does not stall the
GPU between layers (the host still launches kernels one by one: no CUDA graph while profiling).
"""
from __future__ import annotations

import time


def profile_layers(engine, inputs: dict, runs: int = 10, warmup: int = 2) -> list[dict]:
    """[{"name", "op", "ms" (median over runs), "share" (of the total)}] in execution order."""
    import numpy as np
    import torch
    from ..ir.convert import numpy_to_torch
    feed = {k: numpy_to_torch(np.asarray(v))[0].to(engine.device) for k, v in inputs.items()}
    ids = {v.name: v.id for v in engine.graph.inputs}
    on_cuda = engine.device.type == "cuda"
    steps = engine.program.steps
    samples = [[] for _ in steps]
    for r in range(warmup + max(1, runs)):
        marks = []
        if on_cuda:
            first = torch.cuda.Event(enable_timing=True)
            first.record()

            def hook(step, env, marks=marks):
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                marks.append(e)
        else:
            first = time.perf_counter()

            def hook(step, env, marks=marks):
                marks.append(time.perf_counter())
        with torch.inference_mode():
            engine.program.run({ids[k]: t for k, t in feed.items()}, hook=hook)
        if r < warmup:
            continue
        if on_cuda:
            torch.cuda.synchronize(engine.device)
            prev = first
            for i, e in enumerate(marks):
                samples[i].append(prev.elapsed_time(e))
                prev = e
        else:
            prev = first
            for i, t in enumerate(marks):
                samples[i].append((t - prev) * 1000)
                prev = t
    ms = [float(np.median(s)) if s else 0.0 for s in samples]
    total = sum(ms) or 1.0
    return [{"name": st.node.label, "op": (f"{st.node.domain}::" if st.node.domain else "") + st.node.op_type,
             "ms": m, "mean_ms": float(np.mean(s)) if s else 0.0, "total_ms": float(np.sum(s)), "share": m / total}
            for st, m, s in zip(steps, ms, samples)]


def latency_check(engine, inputs: dict, rows: list[dict], runs: int = 10) -> str | None:
    """A warning when the per-layer times do not add up to a whole run's latency (median of ``runs`` timed
    ``infer`` calls): on a busy machine, or with a thread pool that sleeps between layers, the layer-by-layer
    split can be far from what one inference costs."""
    import numpy as np
    ctx = engine.create_execution_context()
    ctx.infer(inputs)
    times = []
    for _ in range(max(3, runs)):
        t0 = time.perf_counter()
        ctx.infer(inputs)
        times.append((time.perf_counter() - t0) * 1000)
    whole, parts = float(np.median(times)), sum(r["ms"] for r in rows)
    if whole <= 0 or 0.5 <= parts / whole <= 2.0:
        return None
    return (f"the per-layer times add up to {parts:.3f} ms but a whole inference takes {whole:.3f} ms (median of "
            f"{len(times)}): the split is unreliable here (a busy machine, or per-layer hooks changing how the "
            f"thread pool sleeps); rerun on an idle machine or with --threads 1")


def profile_table(rows: list[dict]) -> str:
    from ..engine.report import shorten
    total = sum(r["ms"] for r in rows)
    name_w = min(max([len(r["name"]) for r in rows] + [5]), 40)
    lines = [f"{'layer':<{name_w}}  {'op':<22} {'time (ms)':>10} {'share':>7}"]
    for r in rows:
        lines.append(f"{shorten(r['name'], name_w):<{name_w}}  {shorten(r['op'], 22):<22} {r['ms']:>10.4f} {r['share'] * 100:>6.1f}%")
    lines.append(f"{'total':<{name_w}}  {'':<22} {total:>10.4f} {100.0:>6.1f}%")
    return "\n".join(lines)


def plot_layers(rows: list[dict], path: str, title: str = "") -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import CLIError
        raise CLIError("--plot needs matplotlib, which is not installed: pip install 'kiln[plot]'") from None
    rows = sorted(rows, key=lambda r: r["ms"], reverse=True)
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.28 * len(rows) + 1)))
    ax.barh([r["name"] for r in rows][::-1], [r["ms"] for r in rows][::-1])
    ax.set_xlabel("time per inference (ms, median)")
    ax.set_title(title or "per-layer time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
