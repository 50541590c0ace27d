"""`kiln run`: one inference with inputs from .npy/.npz files (or random with a seed); outputs printed or
saved to .npz."""
from __future__ import annotations

import argparse

import numpy as np

from .buildflags import add_build_flags
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
    if args.output:
        np.savez(args.output, **{k: np.asarray(v) for k, v in outputs.items()})
        print(f"wrote {len(outputs)} output(s) to {args.output}: "
              + ", ".join(f"{k} {describe(v)}" for k, v in outputs.items()))
        return 0
    print_arrays(outputs, full=args.full)
    return 0


def describe(a) -> str:
    a = np.asarray(a)
    return f"{a.dtype}[{'x'.join(map(str, a.shape))}]"


def print_arrays(arrays: dict, full: bool = False) -> None:
    opts = {"threshold": np.inf} if full else {"threshold": 40, "edgeitems": 3}
    with np.printoptions(precision=5, suppress=True, **opts):
        for name, a in arrays.items():
            print(f"{name}: {describe(a)}")
            print(np.asarray(a))
