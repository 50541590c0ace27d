"""The run-time arena: how much of each engine's activation memory it holds, and what it costs or saves.

    python benchmarks/bench_arena.py --device cuda --fp16            # ResNet-50 b256, BERT-base b64
    python benchmarks/bench_arena.py --device cpu --models resnet50 --batches 1

For each model: the build's plan (arena, lower bound), then one context with the arena and one without,
timed alternately (CUDA-event medians on the GPU), and ``ctx.memory_stats()``: tensors placed in the arena
and those still served by torch's allocator, by op type.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import kiln  # noqa: E402 - before torch: the CPU pool's wait policy (kiln/threads.py)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from run import median_ms  # noqa: E402

DEFAULT_BATCH = {"resnet50": 256, "bert_base": 64}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="resnet50,bert_base")
    ap.add_argument("--batches", default="", help="one batch per model (default: 256 / 64)")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)
    names = args.models.split(",")
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [DEFAULT_BATCH.get(n, 1) for n in names]
    rows = []
    for name, batch in zip(names, batches):
        model, sample, axes = models.MODELS[name]()
        size = 128 if name in ("bert_base", "gpt2_small") else 224
        inputs = sample(batch, size, torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as tmp:
            path = models.export_onnx(model, inputs, Path(tmp) / "m.onnx", axes)
            shapes = {n: tuple(x.shape) for n, x in zip(axes, inputs)}
            profile = kiln.Profile.of(**{n: (s, s, s) for n, s in shapes.items()})
            engine = kiln.build(path, kiln.BuilderConfig(device=args.device, fp16=args.fp16, profiles=(profile,)))
        feed = {n: x.to(args.device) for n, x in zip(axes, inputs)}
        placed, plain = engine.create_execution_context(), engine.create_execution_context(arena=False)
        a = placed.infer(feed)
        b = plain.infer(feed)
        same = all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
        ms_placed = median_ms(lambda: placed.infer(feed), args.device, 3, args.iters)
        ms_plain = median_ms(lambda: plain.infer(feed), args.device, 3, args.iters)
        stats = placed.memory_stats() or {}
        mem = engine.report.memory
        rows.append((name, batch, mem.get("arena_bytes", 0), mem.get("lower_bound_bytes", 0), stats, ms_placed,
                     ms_plain, same))
        print(name, batch, stats, flush=True)
    print(f"\n{'model':>10} {'batch':>5} {'plan MiB':>9} {'bound MiB':>9} {'placed':>12} {'allocator':>12} "
          f"{'arena ms':>9} {'plain ms':>9} {'same':>5}  allocator ops")
    for name, batch, arena, bound, st, mp, mn, same in rows:
        print(f"{name:>10} {batch:>5} {arena / 2**20:9.1f} {bound / 2**20:9.1f} "
              f"{st.get('placed_tensors', 0):>4} {st.get('placed_bytes', 0) / 2**20:6.1f}M "
              f"{st.get('allocator_tensors', 0):>4} {st.get('allocator_bytes', 0) / 2**20:6.1f}M "
              f"{mp:9.3f} {mn:9.3f} {str(same):>5}  {st.get('allocator_ops', {})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
