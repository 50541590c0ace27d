"""`kiln bench`: throughput and latency of an engine (or an ONNX file, built in memory first)."""
from __future__ import annotations

import argparse

from .buildflags import add_build_flags
from .output import emit
from .shapes import parse_name_files, parse_shapes
from .timing import DEFAULT_PERCENTILES, export_times


def add_parser(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", parents=[common], help="measure throughput and latency",
                       description="Benchmark an engine (or an ONNX model, built in memory with the build flags). "
                                   "Prints trtexec's performance summary: throughput and min/max/mean/median/"
                                   "percentiles of end-to-end latency, enqueue time, host-to-device copy, compute "
                                   "and device-to-host copy, with warnings when the run is enqueue-bound, "
                                   "transfer-bound or unstable.")
    p.add_argument("model", help="an engine file, or an ONNX model")
    r = p.add_argument_group("benchmark options")
    r.add_argument("--warmup", type=float, default=200.0, metavar="MS",
                   help="warm up for MS milliseconds before measuring (default 200; at least one run)")
    r.add_argument("--iterations", type=int, default=10, metavar="N", help="run at least N inferences (default 10)")
    r.add_argument("--duration", type=float, default=3.0, metavar="S",
                   help="measure for at least S seconds (default 3); both --iterations and --duration must be met")
    r.add_argument("--streams", type=int, default=1, metavar="N",
                   help="N execution contexts run at once, one thread and one CUDA stream each (default 1)")
    r.add_argument("--cuda-graphs", choices=("engine", "on", "off"), default="engine",
                   help="replay CUDA graphs (on) or launch kernels one by one (off); default: the engine's setting")
    r.add_argument("--no-transfers", action="store_true",
                   help="keep inputs and outputs on the device: no host-to-device/device-to-host copies")
    r.add_argument("--spin-wait", action="store_true",
                   help="busy-wait for the GPU instead of blocking (steadier timings, uses a CPU core)")
    r.add_argument("--sleep", type=float, default=0.0, metavar="MS", help="sleep MS milliseconds between inferences")
    r.add_argument("--percentiles", default=",".join(f"{p:g}" for p in DEFAULT_PERCENTILES), metavar="P,P,..",
                   help="latency percentiles to report (default 90,95,99)")
    r.add_argument("--input", metavar="NAME:FILE", action="append", default=[],
                   help="load an input from a .npy file (or raw bytes in the input's type); repeatable")
    r.add_argument("--inputs", metavar="FILE.npz", action="append", default=[],
                   help="load inputs by name from an .npz file; inputs not loaded are random")
    r.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    r.add_argument("--export-times", metavar="FILE", help="write every inference's timings and the stats as JSON")
    add_build_flags(p)
    return p


def settings_from_args(args):
    from .errors import CLIError
    from .measure import BenchSettings
    if args.streams < 1 or args.iterations < 0 or args.duration < 0 or args.warmup < 0:
        raise CLIError("--streams must be >= 1 and --iterations, --duration, --warmup must be >= 0")
    try:
        pct = tuple(float(x) for x in args.percentiles.split(",") if x.strip())
    except ValueError:
        raise CLIError(f"--percentiles: expected numbers such as 90,95,99, got {args.percentiles!r}") from None
    if any(not 0 <= x <= 100 for x in pct):
        raise CLIError(f"--percentiles must lie in 0..100, got {args.percentiles!r}")
    return BenchSettings(streams=args.streams, warmup_ms=args.warmup, iterations=args.iterations,
                         duration_s=args.duration, cuda_graphs={"engine": None, "on": True, "off": False}[
                             args.cuda_graphs], transfers=not args.no_transfers, spin_wait=args.spin_wait,
                         sleep_ms=args.sleep, percentiles=pct)


def run(args) -> int:
    from .inputs import gather_inputs
    from .loading import open_engine
    from .measure import measure
    settings = settings_from_args(args)
    shapes = parse_shapes(args.shapes) if args.shapes else None
    files = {k: v for spec in args.input for k, v in parse_name_files(spec, "--input").items()}
    engine = open_engine(args.model, args)
    inputs = gather_inputs(engine.inputs, engine.profiles, shapes, files, args.inputs, args.seed)
    summary = measure(engine, inputs, settings)
    if args.export_times:
        export_times(summary, args.export_times)
    doc = summary.to_json()
    doc.pop("times")
    emit(args, lambda: _text(args, engine, inputs, summary), doc)
    return 0


def _text(args, engine, inputs: dict, summary) -> str:
    lines = [f"engine: {args.model} on {engine.device}; inputs: "
             + ", ".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in inputs.items())]
    if engine.device.type == "cpu":
        from ..threads import describe
        lines.append(f"threads: {describe()}")
    lines += list(summary.lines())
    lines += [f"warning: {w}" for w in summary.warnings()]
    if args.export_times:
        lines.append(f"timings of {len(summary.records)} inferences written to {args.export_times}")
    return "\n".join(lines)
