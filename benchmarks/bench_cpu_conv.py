"""Kiln's CPU convolutions against onnxruntime's, per layer and end to end (ResNet-50 by default).

    python benchmarks/bench_cpu_conv.py layers             # per unique conv shape: Kiln vs ORT
    python benchmarks/bench_cpu_conv.py e2e --rounds 7     # whole model: Kiln, onnxruntime, eager, alternated

Per layer (rows are unique conv shapes, ``n`` how often each occurs; totals weight by it):
  ort       onnxruntime's own profiler's kernel time for the layer inside the whole model (a one-node model
            would add ORT's NCHWc reorders to every layer, which the whole model does not pay; the profiler
            itself adds ~5% to ORT's run time);
  in-model  Kiln's kernel time for the layer inside the whole engine, with the tactic the build chose
            (``chosen``): cold weights, as in a real run;
  <tactic>  each Kiln candidate of the layer's tactic space alone on random inputs of the layer's shape, as
            the tuner times it (weights in cache: faster than in the model).
Statistic: the minimum by default (``--stat``): on a shared machine other processes only ever add time, and
a preempted thread stalls a whole parallel region for a scheduler time slice. End to end, the runtimes
alternate round by round; the table gives each one's median, the spread of its round medians and its minimum.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import kiln  # noqa: E402 - before torch: the CPU pool's wait policy (kiln/threads.py)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from kiln.ops import KernelContext, default_registry  # noqa: E402
from kiln.passes.propagate import propagate  # noqa: E402
from kiln.tactics import space  # noqa: E402
from kiln.tune.tuner import input_specs, layer_inputs  # noqa: E402


def export(name: str, workdir: Path):
    model, sample, axes = models.MODELS[name]()
    inputs = sample(1, 224, torch.Generator().manual_seed(0))
    path = workdir / f"{name}_b1.onnx"
    models.export_onnx(model, inputs, path, axes)
    return model.eval(), dict(zip(axes, inputs)), path


def ort_session(path: Path, threads: int, profile: bool = False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = profile
    so.profile_file_prefix = str(path.parent / "ort_profile")  # the temporary directory, not the cwd
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


STATS = {"min": min, "median": statistics.median}


def layer_key(in_shape, w_shape, stride, residual: bool) -> tuple:
    return (tuple(in_shape), tuple(w_shape), int(stride), residual)


# -- per layer ---------------------------------------------------------------------------------------------------
def ort_conv_times(path: Path, feed: dict, threads: int, iters: int, stat) -> dict[tuple, list[float]]:
    """{layer key: [``stat`` of the ms of each occurrence, in execution order]} from ORT's profiler."""
    sess = ort_session(path, threads, profile=True)
    np_feed = {k: v.numpy() for k, v in feed.items()}
    for _ in range(5 + iters):  # 5 warm-up runs, dropped below
        sess.run(None, np_feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_node = collections.defaultdict(list)
    order, info = [], {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["args"].get("op_name") != "Conv":
            continue
        name = e["name"]
        if name not in info:
            order.append(name)
            shapes = [next(iter(s.values())) for s in e["args"]["input_type_shape"]]
            out = next(iter(e["args"]["output_type_shape"][0].values()))
            stride = shapes[0][-1] // out[-1] if out[-1] else 1
            info[name] = layer_key(shapes[0], shapes[1], stride, len(shapes) > 3)
        per_node[name].append(e["dur"] / 1e3)
    out = collections.defaultdict(list)
    for name in order:
        times = per_node[name][-iters:]  # the timed iterations only
        out[info[name]].append(stat(times))
    return out


def in_model_times(engine, feed: dict, iters: int, stat) -> dict:
    """{node label: ``stat`` of its kernel's ms} over ``iters`` runs of the whole engine (cold weights, the
    activations where the layer before left them: what a layer costs in the model, unlike timing it alone)."""
    samples = collections.defaultdict(list)
    steps = engine.program.steps
    originals = [st.kernel for st in steps]

    def timed(kernel, label):
        def run(*a, **kw):
            t0 = time.perf_counter()
            out = kernel(*a, **kw)
            samples[label].append((time.perf_counter() - t0) * 1e3)
            return out
        return run
    try:
        for st in steps:
            st.kernel = timed(st.kernel, st.node.label)
        ctx = engine.create_execution_context()
        for _ in range(iters):
            ctx.infer(feed)
    finally:
        for st, k in zip(steps, originals):
            st.kernel = k
    return {k: stat(v[3:]) for k, v in samples.items()}


def time_alternating(fns: dict, rounds: int, calls: int, stat) -> dict[str, float]:
    """``stat`` of the ms per call of each fn, the fns interleaved round by round (load swings hit all alike)."""
    samples = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                samples[k].append((time.perf_counter() - t0) * 1e3)
    return {k: stat(v) for k, v in samples.items()}


def describe_conv(node, specs) -> str:
    w = specs[1].shape
    s = node.attrs.get("strides", [1, 1])[0]
    epi = ",".join(node.attrs.get("epilogue", [])) or "-"
    return f"{w[1]:>4}->{w[0]:<4} {w[2]}x{w[3]}/{s} @{specs[0].shape[2]:<3} {epi}"


def run_layers(args, workdir: Path) -> None:
    _, feed, path = export(args.model, workdir)
    shapes = {k: tuple(v.shape) for k, v in feed.items()}
    engine = kiln.build(path, kiln.BuilderConfig(device="cpu", profiles=(kiln.Profile.fixed(shapes),)))
    graph, constants, device = engine.graph, engine._constants, torch.device("cpu")
    facts = propagate(graph, shapes, default_registry())
    stat = STATS[args.stat]
    ort_times = ort_conv_times(path, feed, args.threads, args.ort_iters, stat)
    in_model = in_model_times(engine, feed, args.ort_iters, stat)
    rows = collections.OrderedDict()
    for node in graph.nodes:
        if (node.domain, node.op_type) != ("kiln", "Conv"):
            continue
        specs = input_specs(node, facts, constants)
        residual = any(s.startswith("add:") for s in node.attrs.get("epilogue", []))
        key = layer_key(specs[0].shape, specs[1].shape, node.attrs.get("strides", [1, 1])[0], residual)
        key = key + (tuple(node.attrs.get("epilogue", [])),)
        if key in rows:
            rows[key]["n"] += 1
            rows[key]["in_model"].append(in_model[node.label])
            continue
        rows[key] = {"n": 1, "node": node, "specs": specs, "chosen": (node.meta.get("tactic") or {}).get("name"),
                     "in_model": [in_model[node.label]]}
    names = args.tactics.split(",") if args.tactics else None
    all_labels: list[str] = []
    ctx = KernelContext(opset=21, device=device, num_outputs=1, output_types=[None], node_name="")
    for key, row in rows.items():
        node = row["node"]
        inputs = layer_inputs(node, facts, constants, device, seed=0)
        ref_kernel = default_registry().get(node.domain, node.op_type).kernel
        fns = {}
        for c in space.candidates(node, device):
            if names and c.name not in names:
                continue
            try:
                t = space.make(c, node, constants, device)
            except space.NotApplicable:
                continue
            kernel = ref_kernel if t is None else t.kernel
            fns[c.label] = (lambda k=kernel: k(ctx, inputs, node.attrs))
            if c.label not in all_labels:
                all_labels.append(c.label)
        with torch.inference_mode():
            row["kiln"] = time_alternating(fns, args.rounds, args.calls, stat)
        # ORT may fuse a residual add into the other conv of the pair (downsample vs. last conv of a block).
        ort = ort_times.get(key[:4]) or ort_times.get(key[:3] + (not key[3],), [])
        row["ort"] = statistics.median(ort) if ort else None
    print_layers(rows, all_labels)


def print_layers(rows, labels: list[str]) -> None:
    head = f"{'conv (cin->cout kxk/stride @H epilogue)':<40} {'n':>2} {'chosen':>7} {'ort':>7} {'in-model':>8} " + \
        " ".join(f"{lb[:12]:>12}" for lb in labels) + "   best/ort"
    print(head)
    totals = collections.Counter()
    for row in rows.values():
        n, k = row["n"], row["kiln"]
        best = min(k.values()) if k else float("nan")
        ort = row["ort"]
        cells = " ".join(f"{k[lb]:12.3f}" if lb in k else f"{'-':>12}" for lb in labels)
        ratio = f"{best / ort:8.2f}x" if ort else "       -"
        here = statistics.median(row["in_model"])
        print(f"{describe_conv(row['node'], row['specs']):<40} {n:>2} {str(row['chosen'])[:7]:>7} "
              f"{ort if ort is not None else float('nan'):7.3f} {here:8.3f} {cells} {ratio}")
        totals["ort"] += n * (ort or 0)
        totals["in_model"] += sum(row["in_model"])
        totals["best"] += n * best
        for lb in labels:
            totals[lb] += n * k.get(lb, float("nan"))
    # a tactic that does not take every layer (onednn_gemm: 1x1 only) has no total
    cells = " ".join(f"{totals[lb]:12.2f}" if totals[lb] == totals[lb] else f"{'-':>12}" for lb in labels)
    print(f"{'total ms (weighted by n)':<40} {'':>2} {'':>7} {totals['ort']:7.2f} {totals['in_model']:8.2f} {cells}  "
          f"best: {totals['best']:.2f}")


# -- end to end --------------------------------------------------------------------------------------------------
def run_e2e(args, workdir: Path) -> None:
    model, feed, path = export(args.model, workdir)
    shapes = {k: tuple(v.shape) for k, v in feed.items()}
    engine = kiln.build(path, kiln.BuilderConfig(device="cpu", profiles=(kiln.Profile.fixed(shapes),)))
    print("kiln tactics:", dict(collections.Counter(l.tactic for l in engine.report.layers if l.tactic)))
    ctx = engine.create_execution_context()
    sess = ort_session(path, args.threads)
    np_feed = {k: v.numpy() for k, v in feed.items()}
    x = tuple(feed.values())
    with torch.inference_mode():
        ref = model(*x)
        got = next(iter(ctx.infer(feed).values()))
        ort_out = torch.from_numpy(sess.run(None, np_feed)[0])
    err = lambda a: float((a.double() - ref.double()).norm() / ref.double().norm())  # noqa: E731
    print(f"rel err vs eager: kiln {err(got):.1e}, ort {err(ort_out):.1e}")
    fns = {"kiln": lambda: ctx.infer(feed), "ort": lambda: sess.run(None, np_feed), "eager": lambda: model(*x)}
    rounds, every = collections.defaultdict(list), collections.defaultdict(list)
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(3):
                fn()
        for _ in range(args.rounds):
            for k, fn in fns.items():
                ts = []
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    fn()
                    ts.append((time.perf_counter() - t0) * 1e3)
                rounds[k].append(statistics.median(ts))
                every[k] += ts
    print(f"{'runtime':<8} {'median ms':>10} {'min..max of round medians':>28} {'min ms':>8}")
    for k, v in rounds.items():
        print(f"{k:<8} {statistics.median(v):10.2f} {min(v):13.2f} .. {max(v):<12.2f} {min(every[k]):8.2f}")
    print(f"kiln/ort: median {statistics.median(rounds['kiln']) / statistics.median(rounds['ort']):.3f}, "
          f"min {min(every['kiln']) / min(every['ort']):.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["layers", "e2e"])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=5, help="layers: calls per round per candidate")
    ap.add_argument("--iters", type=int, default=10, help="e2e: runs per round per runtime")
    ap.add_argument("--ort-iters", type=int, default=30)
    ap.add_argument("--stat", choices=sorted(STATS), default="min",
                    help="layers: min (default: other processes on a shared machine only add time) or median")
    ap.add_argument("--tactics", default="", help="layers: only these tactic names (comma-separated)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        (run_layers if args.what == "layers" else run_e2e)(args, Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
