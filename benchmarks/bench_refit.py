"""Issue 20's bars on full-size models: refit, weight-stripped engines, an engine moved between devices.

For ResNet-50 and BERT-base (benchmarks/models.py, random weights; ResNet exported with its BatchNorms kept, so
Kiln folds them): two ONNX files of the same architecture with other random weights (A and B). Then

- refit: an engine built refittable from A, refitted from B (kiln.Refitter.set_weights_from_onnx), against a
  fresh build of B (relative error of every output), and again after save + load; a refit with A's own weights
  gives bit-identical engine constants;
- stripped: the size of ``save(weights=False)`` against the full file, ``Engine.load(weights_from=A)`` giving
  the full engine's outputs exactly, and the wrong ONNX refused (ModelMismatchError);
- moved: with ``--device cpu`` (the default), B's engine with its header claiming a GPU (and GPU-only tactics)
  loads and runs on this CPU, with notes listing the replaced tactics; with ``--device cuda`` everything above
  is built for the GPU, and the real GPU engine is loaded on the CPU (``Engine.deserialize(..., device="cpu")``)
  and a CPU build of B on the GPU, each against the fresh GPU build.

    PYTHONPATH=. python benchmarks/bench_refit.py [--models resnet50 bert_base] [--precisions fp32 fp16 int8]
                                                  [--device cpu|cuda] [--out F]

int8: A's engine is calibrated on random inputs; the refit re-quantizes B's weights with A's stored scales, and
the fresh build of B reads the same scales from A's calibration cache.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kiln  # noqa: E402 - before torch: the CPU pool's wait policy (kiln/threads.py)
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import models  # noqa: E402
from kiln.engine import format as fmt  # noqa: E402
from kiln.engine.graph_json import encode_graph  # noqa: E402


def make(name: str, seed: int):
    torch.manual_seed(seed)
    model, sample, axes = models.MODELS[name]()
    models.randomize_batchnorm(model, seed)
    return model, sample, axes


def export(name: str, seed: int, folder: Path) -> tuple[Path, dict]:
    model, sample, axes = make(name, seed)
    g = torch.Generator().manual_seed(0)
    inputs = sample(1, 128 if name == "bert_base" else 224, g)
    path = folder / f"{name}_{seed}.onnx"
    extra = {"do_constant_folding": False} if name == "resnet50" else {}  # keep BatchNorm: Kiln folds it
    models.export_onnx(model, inputs, path, axes, **extra)
    return path, {n: x.numpy() for n, x in zip(axes, inputs)}


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def max_rel(outs: dict, refs: dict) -> float:
    return max(rel(outs[k], refs[k]) for k in refs)


def constants_equal(e1, e2) -> bool:
    """Whether two engines of one plan hold bit-identical constants, value by value."""
    (p1, t1), (p2, t2) = encode_graph(e1.graph), encode_graph(e2.graph)
    c1 = [t1[v["const"]] for v in p1["values"] if "const" in v]
    c2 = [t2[v["const"]] for v in p2["values"] if "const" in v]
    return len(c1) == len(c2) and all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(c1, c2))


def run(engine, feed) -> dict:
    return engine.create_execution_context().infer(feed)


def shapes_of(feed: dict) -> tuple:
    return (kiln.Profile.fixed({k: tuple(v.shape) for k, v in feed.items()}),)


def bench(name: str, precision: str, folder: Path, device: str = "cpu") -> dict:
    a, feed = export(name, 1, folder)
    b, _ = export(name, 2, folder)
    opts = {"profiles": shapes_of(feed), "device": device, **({"fp16": True} if precision == "fp16" else {})}
    if precision == "int8":  # A's scales, from its calibration; B's fresh build reads them from the cache
        model, sample, _ = make(name, 1)
        g = torch.Generator().manual_seed(7)
        batches = [dict(zip(feed, (x.numpy() for x in sample(1, 128 if name == "bert_base" else 224, g))))
                   for _ in range(4)]
        opts.update(int8=True, calibration_cache=str(folder / f"{name}.cal.json"))
        if Path(opts["calibration_cache"]).exists():
            Path(opts["calibration_cache"]).unlink()
    row: dict = {"model": name, "precision": precision, "device": device}
    if device.startswith("cuda"):
        row["card"] = torch.cuda.get_device_name()
    t0 = time.perf_counter()
    engine = kiln.build(str(a), refittable=True, **opts,
                        **({"int8_calibrator": batches} if precision == "int8" else {}))
    row["build_s"] = round(time.perf_counter() - t0, 1)
    out_a = run(engine, feed)

    before_plan, before = encode_graph(engine.graph)
    r = kiln.Refitter(engine)
    r.set_weights_from_onnx(str(a))
    r.refit()
    after_plan, after = encode_graph(engine.graph)
    row["same_weights_bit_identical"] = after_plan == before_plan and all(torch.equal(before[k], after[k])
                                                                           for k in before)
    r.set_weights_from_onnx(str(b))
    t0 = time.perf_counter()
    r.refit()
    row["refit_s"] = round(time.perf_counter() - t0, 2)
    fresh = kiln.build(str(b), **opts)
    want = run(fresh, feed)
    row["refit_vs_fresh_max_rel"] = max_rel(run(engine, feed), want)
    # Where outputs differ, is it the weights or the kernels? The fresh build tunes its tactics anew (timed, so
    # they can differ from the ones the refitted engine kept) and, in reduced precision, measures again.
    row["constants_equal_fresh"] = constants_equal(engine, fresh)
    row["tactics_differing"] = sum(engine.tactics.get(k) != v for k, v in fresh.tactics.items())
    row["refit_differs_from_A"] = max_rel(run(engine, feed), out_a)
    reloaded = kiln.Engine.deserialize(engine.serialize())
    row["reloaded_vs_fresh_max_rel"] = max_rel(run(reloaded, feed), want)

    full, stripped = engine.serialize(), fresh.serialize(weights=False)
    row["full_bytes"], row["stripped_bytes"] = len(fresh.serialize()), len(stripped)
    row["refittable_bytes"] = len(full)
    row["stripped_fraction"] = round(len(stripped) / row["full_bytes"], 5)
    loaded = kiln.Engine.deserialize(stripped, weights_from=str(b))
    outs = run(loaded, feed)
    row["stripped_identical"] = all(np.array_equal(outs[k], want[k]) for k in want)
    wrong = export("resnet50" if name == "bert_base" else "bert_base", 3, folder)[0]
    try:
        kiln.Engine.deserialize(stripped, weights_from=str(wrong))
        row["wrong_onnx"] = "loaded (wrong!)"
    except kiln.ModelMismatchError as e:
        row["wrong_onnx"] = str(e)[:160]

    if device.startswith("cuda"):
        return moved_for_real(row, fresh, str(b), opts, feed, want)
    header, plan, weights = fmt.unpack(fresh.serialize())
    for k in ("plan_bytes", "weights_bytes", "raw_dtypes"):
        header.pop(k)
    header["device"] = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "capability": [9, 0]}
    header["config"]["device"] = "cuda"
    for node in plan["nodes"]:
        if node["op"] in ("Conv", "Linear", "QConv", "QLinear"):
            node["meta"]["tactic"] = {"name": "triton_gemm", "params": {"BLOCK_M": 64}}
    moved = kiln.Engine.deserialize(fmt.pack(header, plan, weights))
    row["moved_device"] = str(moved.device)
    row["moved_tactics_replaced"] = sum("stored tactic" in n for n in moved.load_notes)
    row["moved_vs_cpu_max_rel"] = max_rel(run(moved, feed), want)
    return row


def moved_for_real(row: dict, gpu_engine, onnx_b: str, opts: dict, feed: dict, want: dict) -> dict:
    """The GPU build of B loaded on the CPU, and a CPU build of B loaded on the GPU, against the GPU build."""
    down = kiln.Engine.deserialize(gpu_engine.serialize(), device="cpu")
    row["moved_device"] = str(down.device)
    row["moved_tactics_replaced"] = sum("stored tactic" in n for n in down.load_notes)
    row["moved_notes"] = len(down.load_notes)
    row["moved_vs_gpu_max_rel"] = max_rel(run(down, feed), want)
    cpu_opts = {k: v for k, v in opts.items() if k not in ("device", "fp16")}
    up = kiln.Engine.deserialize(kiln.build(onnx_b, device="cpu", **cpu_opts).serialize(), device=opts["device"])
    row["moved_up_device"] = str(up.device)
    row["moved_up_notes"] = len(up.load_notes)
    row["moved_up_vs_gpu_max_rel"] = max_rel(run(up, feed), want)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet50", "bert_base"])
    p.add_argument("--precisions", nargs="+", default=["fp32"])
    p.add_argument("--device", default="cpu", help="cpu, or cuda: build, refit and move on the GPU")
    p.add_argument("--out", help="write the rows as JSON")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for precision in args.precisions:
                row = bench(name, precision, Path(tmp), args.device)
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
