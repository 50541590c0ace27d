"""INT8 / FP8 engines against Kiln's own fp16 engine, one run on one machine (the precision issue's bars).

    python benchmarks/bench_int8.py --device cuda --model resnet50 --batch 256
    python benchmarks/bench_int8.py --device cuda --model bert_base --batch 64

Calibration: a few random batches (MinMax), so this measures speed, not accuracy on real data; the
accuracy printed beside each row is the cosine of its output to the fp32 engine's on a held-out batch.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import kiln  # noqa: E402 - before torch: the CPU pool's wait policy (kiln/threads.py)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from run import median_ms  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--precisions", default="fp16,int8,fp8")
    ap.add_argument("--calib-batches", type=int, default=4)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--explain", action="store_true",
                    help="print each engine's tactics for quantized layers (with rejected candidates) and its "
                         "ten slowest layers (per-layer profile, no CUDA graph)")
    ap.add_argument("--kernels", action="store_true",
                    help="print each engine's GPU kernels by total time (torch.profiler over CUDA-graph replays)")
    ap.add_argument("--search", default="shortlist",
                    help="comma list of tactic searches to build each precision with: shortlist (the tuner's "
                         "default below level 5) and/or exhaustive (every candidate on every layer; the "
                         "shortlist's speed and build-time effect, built after the shortlist so any compile "
                         "cache favours it)")
    ap.add_argument("--profile-json", help="with --explain: write every layer's profile row here (per precision)")
    args = ap.parse_args(argv)
    model, sample, axes = models.MODELS[args.model]()
    size = args.seq if args.model in ("bert_base", "gpt2_small") else 224
    g = torch.Generator().manual_seed(0)
    names = list(axes)
    calib = [dict(zip(names, (x.numpy() for x in sample(max(1, args.batch // 8), size, g))))
             for _ in range(args.calib_batches)]
    held_out = sample(args.batch, size, g)
    feed = {n: x.to(args.device) for n, x in zip(names, held_out)}
    shapes = {n: tuple(x.shape) for n, x in zip(names, held_out)}
    profile = kiln.Profile.of(**{n: ((1,) + s[1:], s, s) for n, s in shapes.items()})
    with tempfile.TemporaryDirectory() as tmp:
        path = models.export_onnx(model, held_out, Path(tmp) / "m.onnx", axes)
        ref = None
        rows = []
        searches = args.search.split(",")
        for prec, search in [("fp32", searches[0])] + [(p, s) for p in args.precisions.split(",") for s in searches]:
            kw = {"fp16": prec in ("fp16", "int8", "fp8"), "int8": prec == "int8", "fp8": prec == "fp8"}
            if prec in ("int8", "fp8"):
                kw.update(int8_calibrator=calib, calibration_method="minmax")
            t0 = time.perf_counter()
            try:
                with tactic_search(search):
                    engine = kiln.build(path, kiln.BuilderConfig(device=args.device, profiles=(profile,), **kw))
            except kiln.KilnError as e:
                print(f"{prec}: build failed: {e}")
                continue
            build_s = time.perf_counter() - t0
            if len(searches) > 1:
                prec = f"{prec}/{search}"
            ctx = engine.create_execution_context()
            out = next(iter(ctx.infer(feed).values())).float().flatten()
            if ref is None:
                ref = out
            cos = float(torch.nn.functional.cosine_similarity(out, ref, dim=0))
            ms = median_ms(lambda: ctx.infer(feed), args.device, 5, args.iters)
            quant = sum(1 for l in engine.report.layers if l.precision in ("i8", "int8", "f8e4m3fn", "fp8"))
            rows.append((prec, ms, args.batch / ms * 1e3, cos, build_s, quant, len(engine.report.layers)))
            print(rows[-1], flush=True)
            if args.kernels:
                kernel_table(ctx, feed, args.device)
            if args.explain:
                print("  context notes:", ctx.notes, "load notes:", engine.load_notes[:3])
                prof = explain(engine, {n: x.numpy() for n, x in zip(names, held_out)})
                if args.profile_json:
                    import json
                    Path(f"{args.profile_json}.{prec}.json").write_text(json.dumps(prof, indent=0, default=str))
    base = next((r for r in rows if r[0].split("/")[0] == "fp16"), rows[0])
    print(f"\n{time.strftime('%Y-%m-%d')} | {kiln.engine.device_info.describe(args.device)['name']} | {args.model} "
          f"batch {args.batch}")
    print(f"{'precision':>9} {'ms':>9} {'items/s':>10} {'vs fp16':>8} {'cos vs fp32':>12} {'build s':>8} "
          f"{'quantized layers':>17}")
    for p, ms, ips, cos, b, q, n in rows:
        print(f"{p:>9} {ms:9.3f} {ips:10.0f} {ips / base[2]:7.2f}x {cos:12.5f} {b:8.1f} {q:>8}/{n}")
    return 0


@contextlib.contextmanager
def tactic_search(search: str):
    """``exhaustive``: the tuner times every candidate on every layer (its shortlist never starts)."""
    from kiln.tune import tuner
    if search not in ("shortlist", "exhaustive"):
        raise SystemExit(f"--search: shortlist or exhaustive, not {search!r}")
    saved = tuner.SHORTLIST_AFTER
    tuner.SHORTLIST_AFTER = 10**9 if search == "exhaustive" else saved
    try:
        yield
    finally:
        tuner.SHORTLIST_AFTER = saved


def kernel_table(ctx, feed, device, runs: int = 10) -> None:
    """GPU time per kernel name over ``runs`` inferences (the context replays its CUDA graph)."""
    from torch.profiler import ProfilerActivity, profile
    ctx.infer(feed)
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            ctx.infer(feed)
        torch.cuda.synchronize(device)
    rows = [(e.key, e.device_time_total / runs / 1e3, e.count // runs) for e in prof.key_averages()
            if e.device_time_total > 0]
    total = sum(r[1] for r in rows)
    print(f"  GPU kernels per run: {total:.3f} ms")
    for name, ms, n in sorted(rows, key=lambda r: -r[1])[:25]:
        print(f"    {ms:8.3f} ms {n:5d}x  {name[:110]}")
    from torch.autograd import DeviceType
    seq = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)
    per_run = len(seq) // runs
    print("  one run's kernels 20..50 in order (us):",
          ", ".join(f"{e.name[:24]} {e.time_range.elapsed_us():.1f}" for e in seq[20:min(50, per_run)]))


def explain(engine, feeds) -> None:
    from collections import Counter

    from kiln.cli.layerprof import profile_layers
    q = [layer for layer in engine.report.layers if layer.op in ("kiln::QLinear", "kiln::QConv")]
    by_tactic = Counter((layer.op, layer.tactic) for layer in q)
    print("  quantized layers by tactic:", dict(by_tactic))
    # the first two, and the odd ones out (the reference kernel, or a tactic only one layer took)
    for layer in q[:2] + [x for x in q[2:] if x.tactic == "torch" or by_tactic[(x.op, x.tactic)] == 1]:
        print(f"  {layer.name}: {layer.tactic} <- {layer.candidates}")
    prof = profile_layers(engine, feeds, runs=5, warmup=2)
    total = sum(p["ms"] for p in prof)
    by_op = Counter()
    for p in prof:
        by_op[p["op"]] += p["ms"]
    print(f"  per-layer total {total:.3f} ms; by op: " + ", ".join(f"{k} {v:.3f}" for k, v in by_op.most_common(8)))
    for p in sorted(prof, key=lambda p: -p["ms"])[:10]:
        print(f"    {p['ms']:8.3f} ms  {p['op']:<18} {p['name']}")
    return prof


if __name__ == "__main__":
    sys.exit(main())
