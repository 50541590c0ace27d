"""Where one zoo model's GPU time goes, Kiln against torch.compile, kernel by kernel (issue 18's slow rows).

    python benchmarks/profile_zoo_model.py --model efficientnet_b0 --batch 256

Builds the fp16 Kiln engine and torch.compile (reduce-overhead) of the same model, prints each one's GPU kernels
by total time per run (torch.profiler over replays), then Kiln's layers by op and its slowest layers with their
tactics (per-layer profile without CUDA graphs), so a row of the zoo where torch.compile wins can be traced to
the kernels that lose.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import kiln  # noqa: E402 - before torch: the CPU pool's wait policy (kiln/threads.py)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402
import zoo  # noqa: E402
from bench_int8 import kernel_table  # noqa: E402
from run import median_ms  # noqa: E402


def compiled_kernels(fn, runs: int = 10, top: int = 20) -> None:
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / runs / 1e3, e.count // runs) for e in prof.key_averages()
            if e.device_time_total > 0]
    print(f"  GPU kernels per run: {sum(r[1] for r in rows):.3f} ms")
    for name, ms, n in sorted(rows, key=lambda r: -r[1])[:top]:
        print(f"    {ms:8.3f} ms {n:5d}x  {name[:110]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_b0")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args(argv)
    model, sample, axes = zoo.ZOO[args.model].build()
    g = torch.Generator().manual_seed(0)
    inputs = sample(args.batch, 224, g)
    names = list(axes)
    with tempfile.TemporaryDirectory() as tmp:
        path = models.export_onnx(model.eval(), inputs, Path(tmp) / "m.onnx", axes)
        shapes = {n: tuple(x.shape) for n, x in zip(names, inputs)}
        t0 = time.perf_counter()
        profile = kiln.Profile.of(**{n: (s, s, s) for n, s in shapes.items()})
        engine = kiln.build(path, kiln.BuilderConfig(device="cuda", fp16=True, profiles=(profile,)))
        print(f"{args.model} batch {args.batch}: Kiln build {time.perf_counter() - t0:.1f} s; card "
              f"{torch.cuda.get_device_name()}")
    model = model.cuda().half()
    feed = {n: (x.cuda().half() if x.is_floating_point() else x.cuda()) for n, x in zip(names, inputs)}
    ctx = engine.create_execution_context()
    kfeed = {n: x.float() if x.is_floating_point() else x for n, x in feed.items()}
    print(f"Kiln fp16: {median_ms(lambda: ctx.infer(kfeed), 'cuda', 5, args.iters):.3f} ms")
    kernel_table(ctx, kfeed, "cuda")
    if not args.no_compile:
        with torch.inference_mode():
            compiled = torch.compile(model, mode="reduce-overhead")
            call = lambda: compiled(*feed.values())  # noqa: E731
            for _ in range(3):
                call()
            print(f"torch.compile fp16: {median_ms(call, 'cuda', 5, args.iters):.3f} ms")
            compiled_kernels(call)
    explain_layers(engine, {n: x.float().cpu().numpy() if x.is_floating_point() else x.cpu().numpy()
                            for n, x in feed.items()})
    return 0


def explain_layers(engine, feeds) -> None:
    from collections import Counter

    from kiln.cli.layerprof import profile_layers
    prof = profile_layers(engine, feeds, runs=5, warmup=2)
    tactic = {l.name: l.tactic for l in engine.report.layers}
    by_op = Counter()
    for p in prof:
        by_op[f"{p['op']} [{tactic.get(p['name'], '')}]"] += p["ms"]
    print(f"Kiln per-layer total {sum(p['ms'] for p in prof):.3f} ms (no CUDA graph); by op and tactic:")
    for k, v in by_op.most_common(14):
        print(f"    {v:8.3f} ms  {k}")
    for p in sorted(prof, key=lambda p: -p["ms"])[:12]:
        print(f"    {p['ms']:8.3f} ms  {p['op']:<18} {p['name']} [{tactic.get(p['name'], '')}]")


if __name__ == "__main__":
    sys.exit(main())
