"""Where a build's time goes: the build report's passes and tuning, and cProfile's slowest functions.

    python benchmarks/profile_build.py --device cuda --model resnet50 --batch 256 --precision int8
    python benchmarks/profile_build.py --device cpu --model resnet50 --batch 16 --precision int8 --top 20

Issue 18's 8-bit build bar (under 30 s cold) needs this on the GPU: an int8 ResNet-50 build took 85-93 s on the
H100 (2026-12-07) with tuner shortlists saving only 8 s of it, so most of it is not candidate timing. On the CPU
the same profile found the per-layer thread choice taking 100 of 111 s (now budgeted: kiln/tune/layer_threads.py).
Models are those of benchmarks/models.py with random weights; int8/fp8 calibrate with MinMax on four batches.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kiln  # noqa: E402 - before torch: the CPU pool's wait policy (kiln/threads.py)
import torch  # noqa: E402

import models  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="resnet50", choices=sorted(models.MODELS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--precision", default="int8", choices=["fp32", "fp16", "int8", "fp8"])
    ap.add_argument("--top", type=int, default=30, help="functions listed, by cumulative and by own time")
    args = ap.parse_args(argv)
    model, sample, axes = models.MODELS[args.model]()
    size = 128 if args.model in ("bert_base", "gpt2_small") else 224
    g = torch.Generator().manual_seed(0)
    names = list(axes)
    held = sample(args.batch, size, g)
    shapes = {n: tuple(x.shape) for n, x in zip(names, held)}
    profile = kiln.Profile.of(**{n: ((1,) + s[1:], s, s) for n, s in shapes.items()})
    quant = {}
    if args.precision in ("int8", "fp8"):
        calib = [dict(zip(names, (x.numpy() for x in sample(max(1, args.batch // 8), size, g)))) for _ in range(4)]
        quant = {args.precision: True, "int8_calibrator": calib, "calibration_method": "minmax"}
    config = kiln.BuilderConfig(device=args.device, profiles=(profile,), fp16=args.precision != "fp32", **quant)
    with tempfile.TemporaryDirectory() as tmp:
        path = models.export_onnx(model, held, Path(tmp) / "m.onnx", axes)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        engine = kiln.build(path, config)
        prof.disable()
        seconds = time.perf_counter() - t0
    r = engine.report
    print(f"{args.model} batch {args.batch} {args.precision} on {args.device}: build {seconds:.1f} s "
          f"(report: {r.build_seconds:.1f} s)")
    print("tuning:", {k: v for k, v in r.tuning.items() if k != "untuned_for_budget"})
    print("slowest passes:", sorted(((n, round(s, 2)) for n, s in r.pass_seconds), key=lambda p: -p[1])[:8])
    print("notes:", r.notes[:5])
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
