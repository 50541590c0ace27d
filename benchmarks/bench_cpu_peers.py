"""Kiln against its CPU peers in one run: onnxruntime (fp32) and OpenVINO (its default, and f32 forced).

    python benchmarks/bench_cpu_peers.py [--threads 2] [--blocks 5] [--block-s 1.0] [--models a,b] [--skip-big]

Models: the pre-trained real-model set (tests/real_models/registry.py, fetched once), the bundled example at
batch 1 and 8, and ResNet-50 / BERT-base (seq 128) with random weights exported from benchmarks/models.py
(``--skip-big`` leaves those two out). Runtimes, every one with ``--threads`` intra-op threads:
  kiln fp32, kiln bf16 (BuilderConfig(bf16=True), held to the default accuracy target),
  onnxruntime fp32 (CPUExecutionProvider, inter-op 1),
  OpenVINO default (it picks bf16 on CPUs with native bf16) and OpenVINO f32 (INFERENCE_PRECISION_HINT=f32).
Each model's runtimes are timed in blocks of ``--block-s`` seconds, one runtime after another with a pause at
each switch (a pool that still spins would slow the next runtime), repeated ``--blocks`` times; the table
shows the median over blocks of each block's mean latency (ms), and Kiln's ratios to onnxruntime and to
OpenVINO's default. ``err`` is each runtime's largest error against onnxruntime, relative to the output range.
OpenVINO is optional (``pip install -c constraints.txt openvino``); without it those columns are empty.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import kiln  # noqa: E402 - before torch: the CPU pool's wait policy (kiln/threads.py)
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from cpu_timing import block_ms, max_rel_error  # noqa: E402

PAUSE_S = 0.2
RUNTIMES = ("kiln fp32", "kiln bf16", "ort fp32", "ov default", "ov f32")


def _cases(skip_big: bool, wanted: set[str], tmp: Path):
    """(name, onnx path, feeds, kiln profile or None)."""
    from real_models.registry import MODELS, ModelUnavailable, fetch, make_inputs
    rng = np.random.default_rng(0)
    example = str(ROOT / "examples" / "tiny_resnet.onnx")
    for batch in (1, 8):
        x = rng.standard_normal((batch, 3, 64, 64), dtype=np.float32)
        yield f"example b{batch}", example, {"image": x}, kiln.Profile.of(image=(x.shape,) * 3)
    for row in MODELS:
        if wanted and row.name not in wanted:
            continue
        try:
            path = str(fetch(row))
        except ModelUnavailable as e:
            print(f"{row.name}: skipped ({e})", file=sys.stderr)
            continue
        yield row.name, path, make_inputs(row, row.cases[0]), kiln.Profile.of(**row.profile) if row.profile else None
    if skip_big:
        return
    import models
    for name, make in (("resnet50 b1", models.resnet50), ("bert-base b1 s128", models.bert_base)):
        model, sample, axes = make()
        inputs = sample(1, 224 if "resnet" in name else 128, torch.Generator().manual_seed(0))
        path = tmp / f"{name.split()[0]}.onnx"
        models.export_onnx(model, inputs, path, axes)
        feeds = {n: t.numpy() for n, t in zip(axes, inputs)}
        yield name, str(path), feeds, kiln.Profile.of(**{k: (v.shape,) * 3 for k, v in feeds.items()})


def _runners(path: str, feeds: dict, profile, threads: int) -> dict:
    out = {}
    profiles = (profile,) if profile is not None else ()
    for label, extra in (("kiln fp32", {}), ("kiln bf16", {"bf16": True})):
        try:
            ctx = kiln.build(path, kiln.BuilderConfig(device="cpu", profiles=profiles, **extra)) \
                .create_execution_context()
            out[label] = lambda ctx=ctx: ctx.infer(feeds)
        except kiln.KilnError as e:
            print(f"  {label}: {type(e).__name__}: {str(e).splitlines()[0]}", file=sys.stderr)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    out["ort fp32"] = lambda: sess.run(None, feeds)
    try:
        import openvino as ov
    except ImportError:
        return out
    core = ov.Core()
    try:
        model = core.read_model(path)
    except RuntimeError as e:
        print(f"  OpenVINO cannot read {path}: {str(e).strip().splitlines()[-1][:200]}", file=sys.stderr)
        return out
    for label, cfg in (("ov default", {}), ("ov f32", {"INFERENCE_PRECISION_HINT": "f32"})):
        try:
            compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "PERFORMANCE_HINT": "LATENCY", **cfg})
        except RuntimeError as e:  # OpenVINO cannot convert some models: its columns stay empty for them
            print(f"  {label}: {str(e).strip().splitlines()[-1][:200]}", file=sys.stderr)
            continue
        request = compiled.create_infer_request()
        out[label] = lambda request=request: request.infer(feeds)
    return out


def _outputs(result) -> list[np.ndarray]:
    if isinstance(result, dict):
        return [np.asarray(v) for v in result.values()]
    if isinstance(result, list):
        return [np.asarray(v) for v in result]
    return [np.asarray(result[o]) for o in result.keys()]  # OpenVINO's OVDict


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--block-s", type=float, default=1.0)
    p.add_argument("--models", default="", help="comma-separated real-model names (default: all)")
    p.add_argument("--skip-big", action="store_true", help="leave out ResNet-50 and BERT-base")
    a = p.parse_args()
    kiln.set_threads(a.threads)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    print(f"CPU: {cpu}; {' '.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags)}; "
          f"{a.threads} threads each; {kiln.threads.describe()}")
    print(f"| {'model':22s} | " + " | ".join(f"{r:>10s}" for r in RUNTIMES) +
          " | kiln/ort | bf16/ov | err fp32 | err bf16 |")
    print("|" + "-" * 24 + "|" + "|".join("-" * 11 + ":" for _ in RUNTIMES) + "|---------:|--------:|---------:|---------:|")
    with tempfile.TemporaryDirectory() as tmp:
        wanted = {m for m in a.models.split(",") if m}
        for name, path, feeds, profile in _cases(a.skip_big, wanted, Path(tmp)):
            run = _runners(path, feeds, profile, a.threads)
            want = _outputs(run["ort fp32"]())
            errs = {k: max_rel_error(_outputs(fn()), want) for k, fn in run.items() if k.startswith("kiln")}
            for fn in run.values():  # warm-up
                block_ms(fn, min(0.3, a.block_s))
            times = {k: [] for k in run}
            for _ in range(a.blocks):
                for key, fn in run.items():
                    time.sleep(PAUSE_S)
                    times[key].append(block_ms(fn, a.block_s))
            med = {k: statistics.median(v) for k, v in times.items()}
            cells = [f"{med[r]:10.2f}" if r in med else f"{'-':>10s}" for r in RUNTIMES]
            ratio = med.get("kiln fp32", float("nan")) / med["ort fp32"]
            bf = med.get("kiln bf16", float("nan")) / med.get("ov default", float("nan"))
            print(f"| {name:22s} | " + " | ".join(cells) + f" | {ratio:8.2f} | {bf:7.2f} | "
                  f"{errs.get('kiln fp32', float('nan')):8.1e} | {errs.get('kiln bf16', float('nan')):8.1e} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
