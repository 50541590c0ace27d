"""`kiln build model.onnx -o model.engine`: build and save an engine, with progress and the report summary."""
from __future__ import annotations

import argparse
import time

from .buildflags import add_build_flags, config_from_args
from .errors import CLIError
from .loading import check_readable, check_writable, is_engine, plugins_from_args
from .output import emit, quiet
from .progress import Progress


def add_parser(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("build", parents=[common], help="build an engine from an ONNX model",
                       description="Build an optimized engine from an ONNX model and save it to one file.",
                       epilog="Several optimization profiles: repeat the --min-shapes/--opt-shapes/--max-shapes "
                              "triple; e.g. --min-shapes x:1x3x224x224 --opt-shapes x:8x3x224x224 --max-shapes "
                              "x:16x3x224x224 --min-shapes x:32x3x224x224 --opt-shapes x:32x3x224x224 --max-shapes "
                              "x:64x3x224x224 builds two profiles.")
    p.add_argument("model", help="the ONNX model file")
    p.add_argument("-o", "--output", required=True, metavar="ENGINE", help="where to write the engine file")
    add_build_flags(p)
    p.add_argument("--strip-weights", action="store_true",
                   help="write the plan without its weights (load it with Engine.load(path, weights_from=MODEL))")
    p.add_argument("--progress", choices=("auto", "live", "plain", "off"), default="auto",
                   help="progress display on stderr: live (a redrawn line), plain (one line per step, for "
                        "logs) or off; auto picks live on a terminal and plain in a pipe or CI")
    p.add_argument("--layers", action="store_true", help="print the per-layer table after the summary")
    p.add_argument("--export-tactics", metavar="FILE",
                   help="write every layer's tactic choice as JSON to FILE (replay it with --tactic-replay)")
    return p


def run(args) -> int:
    from .. import build
    check_readable(args.model, "model file")
    if is_engine(args.model):
        raise CLIError(f"{args.model!r} is already a Kiln engine; `kiln build` takes an ONNX model")
    config = config_from_args(args)
    check_writable(args.output)  # before the build, not after minutes of it
    progress = Progress("off" if quiet(args) or (args.json and args.progress == "auto") else args.progress)
    t0 = time.perf_counter()
    try:
        engine = build(args.model, config, progress=progress, plugins=plugins_from_args(args))
    finally:
        progress.finish()
    engine.save(args.output, weights=not args.strip_weights)
    if args.export_tactics:
        from ..tune import export_choices
        export_choices(engine, args.export_tactics)
    seconds = time.perf_counter() - t0
    doc = {"engine": args.output, "device": str(engine.device), "seconds": round(seconds, 3),
           "report": engine.report.to_json() if engine.report is not None else None}

    def text() -> str:
        lines = [f"built {args.output} for {engine.device} in {seconds:.2f}s"]
        if engine.report is not None:
            lines.append(engine.report.summary())
            if args.layers:
                lines.append(engine.report.layer_table())
        return "\n".join(lines)
    emit(args, text, doc)
    return 0
