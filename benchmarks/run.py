"""Kiln against its peers, in one run on one machine: prints a table of medians and ratios.

    python benchmarks/run.py                                  # CPU: Kiln vs PyTorch eager vs onnxruntime
    python benchmarks/run.py --device cuda --fp16             # GPU: Kiln vs eager vs torch.compile
    python benchmarks/run.py --models resnet50 --batches 1,256 --json out.json
    python benchmarks/run.py --device cuda --fp16 --quant fp8 --models resnet50 --batches 256   # FP8 (+fp16) engine

Models come from benchmarks/models.py (random weights), exported with torch.onnx.export (TorchScript
exporter). Latency: median over --iters runs after warm-up, CUDA events on the GPU. Kiln's engines are
built for the exact benchmark shape (min = opt = max), as `trtexec --shapes` does.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import kiln  # noqa: E402 - before torch: the CPU pool's wait policy (kiln/threads.py)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
import zoo  # noqa: E402


def median_ms(fn, device: str, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graph_replay_ms(fn, iters: int, inner: int = 10) -> float:
    """Median ms of one ``fn()`` (CUDA): warmed up on a side stream, ``inner`` calls captured in a CUDA graph,
    each replay timed with events and divided by ``inner``."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(inner):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / inner)
    return statistics.median(times)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bench_one(name: str, batch: int, args, workdir: Path) -> dict:
    device = args.device
    entry = zoo.ZOO.get(name)
    built = models.torchvision_model(name) if args.torchvision and entry is None else None
    model, sample, axes = built or (entry.build() if entry is not None else models.MODELS[name]())
    g = torch.Generator().manual_seed(0)
    size = args.gpt2_seq if name == "gpt2_small" else args.seq if "input_ids" in axes else 224
    inputs = sample(batch, size, g)
    path = workdir / f"{name}_b{batch}.onnx"
    t0 = time.perf_counter()
    models.export_onnx(model, inputs, path, axes)
    export_s = time.perf_counter() - t0
    names = list(axes)
    dtype = torch.float16 if args.fp16 else torch.float32
    dev_inputs = tuple(x.to(device) for x in inputs)
    row: dict = {"model": name + (" (torchvision)" if built else ""), "batch": batch, "device": device,
                 "precision": (args.quant + "+" if args.quant else "") + ("fp16" if args.fp16 else "fp32"),
                 "export_s": round(export_s, 2)}

    # PyTorch eager (the reference output too).
    ref_model = model.to(device)
    if args.fp16:
        ref_model = ref_model.half()
    eager_inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in dev_inputs)
    with torch.inference_mode():
        ref = ref_model(*eager_inputs)
        fp32_ref = model.float().to(device)(*dev_inputs) if args.fp16 else ref
        if args.fp16:
            model.half()
        row["eager_ms"] = median_ms(lambda: ref_model(*eager_inputs), device, args.warmup, args.iters)

    # Kiln.
    shapes = {n: tuple(x.shape) for n, x in zip(names, inputs)}
    quant = {}
    if args.quant:  # MinMax calibration on a few random batches (speed, not accuracy on real data)
        calib = [dict(zip(names, (x.numpy() for x in sample(max(1, batch // 8), size, g)))) for _ in range(4)]
        quant = {args.quant: True, "int8_calibrator": calib, "calibration_method": "minmax"}
    config = kiln.BuilderConfig(device=device, fp16=args.fp16, profiles=(kiln.Profile.fixed(shapes),),
                                timing_cache=str(workdir / "timing.cache") if args.timing_cache else None,
                                optimization_level=args.opt_level, tuning_budget_s=args.tuning_budget, **quant)
    t0 = time.perf_counter()
    engine = kiln.build(path, config)
    row["kiln_build_s"] = round(time.perf_counter() - t0, 2)
    if args.timing_cache:  # a second build reads every tactic choice from the cache
        t0 = time.perf_counter()
        engine = kiln.build(path, config)
        row["kiln_build_warm_s"] = round(time.perf_counter() - t0, 2)
    row["kiln_layers"], row["onnx_nodes"] = len(engine.report.layers), engine.report.onnx_nodes
    row["kiln_tuning"] = {k: v for k, v in engine.report.tuning.items() if k != "untuned_for_budget"}
    # where a (warm) build's time went besides tuning: its three slowest passes
    row["kiln_slowest_passes"] = sorted(([n, round(s, 2)] for n, s in engine.report.pass_seconds),
                                        key=lambda p: -p[1])[:3]
    row["kiln_build_outside_passes_and_tuning_s"] = round(
        engine.report.build_seconds - sum(s for _, s in engine.report.pass_seconds)
        - engine.report.tuning.get("seconds", 0.0), 2)  # lowering, memory planning, describing layers
    row["kiln_tactics"] = dict(collections.Counter(l.tactic for l in engine.report.layers if l.tactic))
    row["arena_mib"] = round(engine.report.memory.get("arena_bytes", 0) / 2 ** 20, 1)
    row["lower_bound_mib"] = round(engine.report.memory.get("lower_bound_bytes", 0) / 2 ** 20, 1)
    ctx = engine.create_execution_context()
    feed = dict(zip(names, dev_inputs))
    out = ctx.infer(feed)
    got = next(iter(out.values()))
    first = fp32_ref[0] if isinstance(fp32_ref, (tuple, list)) else fp32_ref
    row["kiln_rel_err_vs_fp32"] = rel_err(got.float(), first.float())
    if args.fp16:  # eager fp16's own error: what fp16 costs this model anyway, beside Kiln's
        eager_first = ref[0] if isinstance(ref, (tuple, list)) else ref
        row["eager_rel_err_vs_fp32"] = rel_err(eager_first.float(), first.float())
    row["kiln_ms"] = median_ms(lambda: ctx.infer(feed), device, args.warmup, args.iters)
    row["kiln_items_per_s"] = round(batch / row["kiln_ms"] * 1e3, 1)

    # torch.compile (GPU) / onnxruntime (CPU).
    if device.startswith("cuda") and not args.no_compile:
        torch._dynamo.reset()
        compiled = torch.compile(ref_model, mode=args.compile_mode)
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(*eager_inputs)
            compiled(*eager_inputs)
            torch.cuda.synchronize()
            row["compile_s"] = round(time.perf_counter() - t0, 1)
            row["compile_mode"] = args.compile_mode
            row["compile_ms"] = median_ms(lambda: compiled(*eager_inputs), device, args.warmup, args.iters)
    if device == "cpu":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        np_feed = {n: x.numpy() for n, x in zip(names, inputs)}
        row["ort_ms"] = median_ms(lambda: sess.run(None, np_feed), device, args.warmup, args.iters)
    return row


def print_table(rows: list[dict]) -> None:
    cols = [("model", "model"), ("batch", "batch"), ("precision", "prec"), ("kiln_ms", "kiln ms"),
            ("eager_ms", "eager ms"), ("compile_ms", "compile ms"), ("ort_ms", "ort ms")]
    head = [c[1] for c in cols] + ["kiln items/s", "eager/kiln", "peer/kiln", "build s", "layers", "rel err",
                                   "eager err"]
    lines = [head]
    for r in rows:
        peer = r.get("compile_ms") or r.get("ort_ms")
        line = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "-")) for k, _ in cols]
        build = str(r["kiln_build_s"]) + (f"/{r['kiln_build_warm_s']}" if "kiln_build_warm_s" in r else "")
        line += [f"{r['kiln_items_per_s']:.0f}", f"{r['eager_ms'] / r['kiln_ms']:.2f}x",
                 f"{peer / r['kiln_ms']:.2f}x" if peer else "-", build, f"{r['onnx_nodes']}->{r['kiln_layers']}",
                 f"{r['kiln_rel_err_vs_fp32']:.1e}",
                 f"{r['eager_rel_err_vs_fp32']:.1e}" if "eager_rel_err_vs_fp32" in r else "-"]
        lines.append(line)
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    for l in lines:
        print("  ".join(c.rjust(w) for c, w in zip(l, widths)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="resnet50,bert_base")
    ap.add_argument("--batches", default="1,8", help="batch sizes for every model (see --suite)")
    ap.add_argument("--suite", choices=["issue5", "zoo"], help="issue5: every model of the performance issue at its "
                    "batch sizes (ResNet-50 1,256; MobileNetV3 1; ViT-B/16 1; BERT-base 1,64; GPT-2 prefill 1); "
                    "zoo: the architectures of benchmarks/zoo.py at batch 1 and each one's large batch")
    ap.add_argument("--zoo-models", help="with --suite zoo: only these (comma-separated names of benchmarks/zoo.py)")
    ap.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode on the GPU "
                    "(reduce-overhead, max-autotune, ...)")
    ap.add_argument("--gpt2-seq", type=int, default=512)
    ap.add_argument("--no-torchvision", dest="torchvision", action="store_false",
                    help="use the plain-torch CNN definitions even where torchvision imports")
    ap.add_argument("--timing-cache", action="store_true", help="build twice with a timing cache: cold and warm")
    ap.add_argument("--opt-level", type=int, default=3, help="BuilderConfig.optimization_level (tactic search breadth)")
    ap.add_argument("--tuning-budget", type=float, help="BuilderConfig.tuning_budget_s")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--quant", choices=["int8", "fp8"], help="build Kiln's engine with INT8 / FP8 layers (MinMax "
                    "calibration on random batches; with --fp16 the other layers run fp16)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for every runtime (0: torch's default)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile on the GPU")
    ap.add_argument("--json", help="write every row as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    plan = [(m, [int(x) for x in args.batches.split(",")]) for m in args.models.split(",")]
    if args.suite == "issue5":
        plan = [("resnet50", [1, 256]), ("mobilenet_v3_large", [1]), ("vit_b16", [1]), ("bert_base", [1, 64]),
                ("gpt2_small", [1])]
    if args.suite == "zoo":
        names = args.zoo_models.split(",") if args.zoo_models else list(zoo.ZOO)
        unknown = [n for n in names if n not in zoo.ZOO]
        if unknown:
            ap.error(f"unknown zoo model(s) {unknown}; the zoo: {', '.join(zoo.ZOO)}")
        batches = [int(x) for x in args.batches.split(",")] if args.batches != "1,8" else None
        plan = []
        for n in names:
            why = zoo.available(n)
            if why:
                print(f"{n}: skipped: {why}", flush=True)
                continue
            plan.append((n, batches or [1, zoo.ZOO[n].large_batch]))
    with tempfile.TemporaryDirectory() as tmp:
        for name, batches in plan:
            for b in batches:
                try:
                    row = bench_one(name, b, args, Path(tmp))
                except Exception as e:  # noqa: BLE001 - one failing model should not hide the others' rows
                    print(f"{name} batch {b}: FAILED: {type(e).__name__}: {e}", flush=True)
                    continue
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:  # after every row: a run stopped at its time limit keeps what it measured
                    Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\n{time.strftime('%Y-%m-%d')} | {kiln.engine.device_info.describe(args.device)['name']} | torch "
          f"{torch.__version__} | threads {torch.get_num_threads()}")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
