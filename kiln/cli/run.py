"""`kiln run`: one inference with inputs from .npy/.npz files (or random with a seed); outputs printed or
saved to .npz."""
from __future__ import annotations

import argparse

import numpy as np

from .buildflags import add_build_flags
from .output import emit
from .shapes import parse_name_files, parse_shapes


def add_parser(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("run", parents=[common], help="run one inference",
                       description="Run an engine (or an ONNX model, built in memory) once and print or save "
                                   "its outputs.")
    p.add_argument("model", help="an engine file, or an ONNX model")
    p.add_argument("--input", metavar="NAME:FILE", action="append", default=[],
                   help="an input from a .npy file (or raw bytes in the input's type, shaped by --shapes); "
                        "repeatable")
    p.add_argument("--inputs", metavar="FILE.npz", action="append", default=[],
                   help="inputs by name from an .npz file; inputs not given are random")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")
    p.add_argument("-o", "--output", metavar="FILE.npz", help="save the outputs (and nothing is printed but a line)")
    p.add_argument("--save-inputs", metavar="FILE.npz", help="also save the inputs used (handy with random ones)")
    p.add_argument("--full", action="store_true", help="print every value instead of numpy's summary")
    add_build_flags(p)
    return p


def run(args) -> int:
    from .inputs import gather_inputs
    from .loading import open_engine
    shapes = parse_shapes(args.shapes) if args.shapes else None
    files = {k: v for spec in args.input for k, v in parse_name_files(spec, "--input").items()}
    engine = open_engine(args.model, args)
    inputs = gather_inputs(engine.inputs, engine.profiles, shapes, files, args.inputs, args.seed)
    outputs = engine.create_execution_context().infer(inputs)
    if args.save_inputs:
        np.savez(args.save_inputs, **inputs)
    doc = {"outputs": {k: _array_json(v, args.full or bool(args.output)) for k, v in outputs.items()}}
    if args.output:
        np.savez(args.output, **{k: np.asarray(v) for k, v in outputs.items()})
        doc["written_to"] = args.output
        emit(args, f"wrote {len(outputs)} output(s) to {args.output}: "
             + ", ".join(f"{k} {describe(v)}" for k, v in outputs.items()), doc)
        return 0
    emit(args, lambda: format_arrays(outputs, full=args.full), doc)
    return 0


def _array_json(a, summary_only: bool) -> dict:
    """An output in --json: dtype and shape, and its values (nested lists) unless written to a file; with
    non-finite floats as the strings "nan", "inf", "-inf" (JSON has no such numbers)."""
    a = np.asarray(a)
    doc = {"dtype": str(a.dtype), "shape": list(a.shape)}
    if not summary_only or a.size <= 64:
        values = a.astype(np.float64) if a.dtype.kind == "f" or str(a.dtype) == "bfloat16" else a
        doc["values"] = _finite_json(values.tolist())
    return doc


def _finite_json(v):
    if isinstance(v, list):
        return [_finite_json(x) for x in v]
    if isinstance(v, float) and not np.isfinite(v):
        return "nan" if np.isnan(v) else "inf" if v > 0 else "-inf"
    return v


def describe(a) -> str:
    a = np.asarray(a)
    return f"{a.dtype}[{'x'.join(map(str, a.shape))}]"


def format_arrays(arrays: dict, full: bool = False) -> str:
    opts = {"threshold": np.inf} if full else {"threshold": 40, "edgeitems": 3}
    with np.printoptions(precision=5, suppress=True, **opts):
        return "\n".join(f"{name}: {describe(a)}\n{np.asarray(a)}" for name, a in arrays.items())
