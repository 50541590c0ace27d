"""`kiln exec`: trtexec's own flag spellings, so scripted trtexec workflows move over unchanged.

``kiln exec --onnx=model.onnx --saveEngine=model.engine`` builds; ``kiln exec --loadEngine=model.engine
--shapes=x:1x3x224x224`` benchmarks and prints trtexec's performance summary. Both ``--flag=value`` and
``--flag value`` work. A trtexec flag Kiln does not implement is an error that names it, never ignored.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from .errors import CLIError

# trtexec flags Kiln knows but does not implement, with the reason shown to the user.
UNSUPPORTED = {
    "--uff": "UFF models are not supported (only ONNX)", "--model": "Caffe models are not supported (only ONNX)",
    "--deploy": "Caffe models are not supported", "--output": "output selection applies to UFF/Caffe only",
    "--uffInput": "UFF models are not supported", "--uffNHWC": "UFF models are not supported",
    "--maxBatch": "implicit batch engines do not exist in Kiln (shapes are explicit; use --shapes)",
    "--batch": "implicit batch engines do not exist in Kiln (use --shapes)",
    "--explicitBatch": None,  # accepted: Kiln is always explicit-batch (handled below)
    "--inputIOFormats": "I/O formats other than the model's own types are not supported yet",
    "--outputIOFormats": "I/O formats other than the model's own types are not supported yet",
    "--minShapesCalib": "calibration runs at the calibration data's own shapes",
    "--optShapesCalib": "calibration runs at the calibration data's own shapes",
    "--maxShapesCalib": "calibration runs at the calibration data's own shapes",
    "--safe": "the safety runtime does not exist in Kiln", "--tacticSources": "tactic sources are not selectable yet",
    "--noBuilderCache": "use --timingCacheFile or leave it out", "--nvtxMode": "NVTX annotation is not supported",
    "--minTiming": "tactic timing iterations are not configurable yet", "--avgTiming": "tactic timing iterations are "
                                                                                      "not configurable yet",
    "--useDLACore": "DLA is not supported", "--allowGPUFallback": "DLA is not supported",
    "--exposeDMA": "DMA serialization is not supported",
"--profilingVerbosity": "Kiln always records layer detail",
    "--sparsity": "structured sparsity is not supported yet",
    "--useManagedMemory": "managed memory is not supported", "--useRuntime": "only the full runtime exists",
    "--dumpRefit": "refit is not supported", "--timeDeserialize": "not supported yet",
    "--timeRefit": "refit is not supported", "--getPlanVersionOnly": "not supported yet",
    "--saveAllEngines": "not supported", "--persistentCacheRatio": "not supported",
    "--layerOutputTypes": "not supported yet", "--heuristic": "not supported", "--calibProfile": "calibration runs at the "
                                                                                                 "calibration data's own shapes",
    "--profile": "selecting a profile by index is not supported; Kiln picks the profile that fits --shapes",
}


def make_parser() -> argparse.ArgumentParser:
    from .main import Parser
    p = Parser(prog="kiln exec", allow_abbrev=False,
                                description="trtexec-compatible front end: build an engine from --onnx (and "
                                            "--saveEngine it) or --loadEngine one, then benchmark it and print "
                                            "trtexec's performance summary.")
    m = p.add_argument_group("model options")
    m.add_argument("--onnx", metavar="FILE", help="ONNX model to build")
    b = p.add_argument_group("build options")
    b.add_argument("--saveEngine", metavar="FILE", help="save the built engine")
    b.add_argument("--loadEngine", metavar="FILE", help="load an engine instead of building one")
    b.add_argument("--fp16", action="store_true", help="enable fp16 in addition to fp32")
    b.add_argument("--bf16", action="store_true", help="enable bf16 in addition to fp32")
    b.add_argument("--int8", action="store_true",
                   help="enable int8 (with --calib: a calibration cache)")
    b.add_argument("--fp8", action="store_true", help="enable fp8 (as --int8)")
    b.add_argument("--int4", action="store_true", help="int4 weight-only MatMul/Gemm layers (MatMulNBits)")
    b.add_argument("--best", action="store_true",
                   help="enable fp16 in addition to fp32 (int8 needs calibration: add --int8 --calib)")
    b.add_argument("--noTF32", action="store_true", help="disable tf32")
    b.add_argument("--stronglyTyped", action="store_true", help="keep the model's own types (no reduced precision)")
    b.add_argument("--layerPrecisions", metavar="SPEC",
                   help="per-layer precision, e.g. 'conv1:fp16,*:fp32' (layer name, glob or op type : precision)")
    b.add_argument("--precisionConstraints", choices=["none", "prefer", "obey"], default="obey",
                   help="'none' ignores --layerPrecisions; 'prefer' and 'obey' apply it (Kiln always obeys)")
    b.add_argument("--calib", metavar="FILE", help="int8 calibration cache to read (and write after calibrating)")
    b.add_argument("--minShapes", metavar="SPEC", action="append", default=[],
                   help="profile min shapes, e.g. x:1x3x224x224; repeat the min/opt/max triple for more profiles")
    b.add_argument("--optShapes", metavar="SPEC", action="append", default=[],
                   help="profile opt shapes; alone it means min=opt=max")
    b.add_argument("--maxShapes", metavar="SPEC", action="append", default=[], help="profile max shapes")
    b.add_argument("--workspace", metavar="MIB", type=float, help="workspace (activation memory) limit in MiB")
    b.add_argument("--memPoolSize", metavar="SPEC",
                   help="workspace:N with N in MiB, or with a K/M/G suffix (other pools are not supported)")
    b.add_argument("--builderOptimizationLevel", type=int, metavar="N", default=3,
                   help="builder optimization level 0-5 (default 3)")
    b.add_argument("--timingCacheFile", metavar="FILE", help="timing cache to read and update")
    b.add_argument("--explicitBatch", action="store_true", help="accepted for compatibility: always explicit batch")
    b.add_argument("--refit", action="store_true",
                   help="build a refittable engine (kiln.Refitter sets its weights by ONNX name, no rebuild)")
    b.add_argument("--stripWeights", action="store_true",
                   help="--saveEngine writes the plan without weights; load it with --loadEngine=FILE --onnx=MODEL")
    b.add_argument("--versionCompatible", "--vc", action="store_true",
                   help="accepted: every Kiln engine loads under another torch or Kiln of its format version")
    b.add_argument("--hardwareCompatibilityLevel", choices=["none", "ampere+"], default="none",
                   help="accepted: every Kiln engine loads on another device, replacing the tactics that do not "
                        "apply there")
    i = p.add_argument_group("inference options")
    i.add_argument("--shapes", metavar="SPEC",
                   help="input shapes to run with (and, when building without min/opt/max, the profile)")
    i.add_argument("--loadInputs", metavar="SPEC", help="name:file[,name:file]; .npy files or raw binary (trtexec)")
    i.add_argument("--iterations", type=int, default=10, metavar="N", help="run at least N inferences (default 10)")
    i.add_argument("--warmUp", type=float, default=200, metavar="MS", help="warm up for MS milliseconds (default 200)")
    i.add_argument("--duration", type=float, default=3, metavar="S", help="run for at least S seconds (default 3)")
    i.add_argument("--sleepTime", type=float, default=0, metavar="MS", help="sleep MS ms between inferences")
    i.add_argument("--streams", type=int, metavar="N", help="N execution contexts run at once (default 1)")
    i.add_argument("--infStreams", type=int, metavar="N", help="same as --streams (newer trtexec spelling)")
    i.add_argument("--plugins", "--staticPlugins", "--dynamicPlugins", "--setPluginsToSerialize", dest="plugin",
                   action="append", default=[], metavar="MODULE",
                   help="a Python module declaring custom ops (kiln.plugin or kiln.trt.plugin), imported by name "
                        "where trtexec loads a plugin library; repeatable")
    i.add_argument("--threads", nargs="?", const=0, type=int, metavar="N",
                   help="--threads alone: trtexec's one thread per context (Kiln always drives each context from "
                        "its own thread); --threads=N: N CPU intra-op threads for building and running")
    i.add_argument("--useCudaGraph", action="store_true", help="replay CUDA graphs (default: launch eagerly)")
    i.add_argument("--noDataTransfers", action="store_true", help="no host<->device copies during inference")
    i.add_argument("--useSpinWait", action="store_true", help="busy-wait for the GPU instead of blocking")
    i.add_argument("--separateProfileRun", action="store_true",
                   help="profile layers in a run separate from the benchmark (Kiln always does)")
    i.add_argument("--skipInference", action="store_true", help="build (and save) only")
    i.add_argument("--buildOnly", action="store_true", help="same as --skipInference")
    r = p.add_argument_group("reporting options")
    r.add_argument("--avgRuns", type=int, default=10, metavar="N",
                   help="print averages over N consecutive inferences (default 10)")
    r.add_argument("--percentile", metavar="P,..", default="90,95,99", help="percentiles to report (default 90,95,99)")
    r.add_argument("--dumpOutput", action="store_true", help="print the outputs of the last inference")
    r.add_argument("--dumpProfile", action="store_true", help="print the per-layer profile")
    r.add_argument("--dumpLayerInfo", action="store_true", help="print the engine's layers")
    r.add_argument("--exportTimes", metavar="FILE", help="write every inference's timings as JSON")
    r.add_argument("--exportOutput", metavar="FILE", help="write the outputs as JSON")
    r.add_argument("--exportProfile", metavar="FILE", help="write the per-layer profile as JSON")
    r.add_argument("--exportLayerInfo", metavar="FILE", help="write the layer information as JSON")
    s = p.add_argument_group("system options")
    s.add_argument("--device", default=None, metavar="N",
                   help="GPU index N (cuda:N); 'cpu' to run on the host (default: GPU 0 if available, else cpu)")
    s.add_argument("--verbose", "-v", action="store_true", help="verbose logs, tracebacks on error")
    s.add_argument("--quiet", "-q", action="store_true", help="(Kiln's) print nothing but errors; the exit code "
                   "tells the result")
    s.add_argument("--json", action="store_true", help="(Kiln's) instead of the log, print one JSON document: "
                   "the engine, the performance summary and whether the run passed")
    return p


def parse(argv: list[str]):
    p = make_parser()
    args, rest = p.parse_known_args(argv)
    for tok in rest:
        flag = tok.split("=", 1)[0]
        if flag in UNSUPPORTED and UNSUPPORTED[flag]:
            raise CLIError(f"trtexec flag {flag} is not supported by kiln exec: {UNSUPPORTED[flag]}")
        if tok.startswith("-"):
            import difflib
            close = difflib.get_close_matches(flag, sorted(p._option_string_actions) + sorted(UNSUPPORTED), n=1,
                                              cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise CLIError(f"unknown trtexec flag {flag}{hint} (see kiln exec --help for the flags kiln exec takes)")
        raise CLIError(f"unexpected argument {tok!r}: kiln exec takes only flags, e.g. --onnx=model.onnx")
    return args


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        make_parser().print_help()
        return 0
    as_json = "--json" in argv
    log = _Log(silent=as_json or "--quiet" in argv or "-q" in argv)
    log.line(f"&&&& RUNNING Kiln.exec # kiln exec {' '.join(shlex.quote(a) for a in argv)}", raw=True)
    try:
        code = _main(parse(argv), log)
    except SystemExit as e:  # argparse's usage errors: the summary line still ends the log
        log.line("&&&& FAILED Kiln.exec", raw=True)
        return int(e.code or 0)
    except BaseException:
        log.line("&&&& FAILED Kiln.exec", raw=True)
        raise
    log.line(f"&&&& {'PASSED' if code == 0 else 'FAILED'} Kiln.exec", raw=True)
    if as_json:
        print(json.dumps({"passed": code == 0, **log.doc}, indent=1, default=str), flush=True)
    return code


def _main(args, log: "_Log") -> int:
    if args.verbose:
        import logging
        logging.basicConfig(level=logging.INFO, format="[V] [kiln] %(message)s")
    from .inputs import gather_inputs
    from .shapes import parse_name_files, parse_shapes
    if not (args.onnx or args.loadEngine):
        raise CLIError("give --onnx=FILE (build) or --loadEngine=FILE (with --onnx=FILE: the weights of a "
                       "weight-stripped engine)")
    if args.threads:  # 0: the bare trtexec flag
        from ..threads import set_threads
        set_threads(args.threads)
    shapes = parse_shapes(args.shapes, "--shapes") if args.shapes else None
    engine = _load(args, log) if args.loadEngine else _build(args, shapes, log)
    log.doc["engine"] = {"device": str(engine.device), "layers": engine.num_layers,
                         "inputs": [i.name for i in engine.inputs], "outputs": list(engine.output_names),
                         **({"saved_to": args.saveEngine} if args.saveEngine else {})}
    if args.dumpLayerInfo or args.exportLayerInfo:
        layers = [vars(l) for l in engine.report.layers] if engine.report else []
        if args.dumpLayerInfo:
            log.line("Layer information:")
            for l in layers:
                log.line(f"  {l['name']}: {l['op']} kernel={l['kernel']} precision={l['precision']} "
                         f"covers=[{', '.join(l['covers'])}] outputs={l['output_shapes']}")
        if args.exportLayerInfo:
            _write_json(args.exportLayerInfo, {"Layers": layers, "Bindings": [i.name for i in engine.inputs] +
                                               engine.output_names})
    if args.skipInference or args.buildOnly:
        log.line("Skipped inference phase since --skipInference or --buildOnly was given.")
        return 0
    files = parse_name_files(args.loadInputs, "--loadInputs") if args.loadInputs else {}
    inputs = gather_inputs(engine.inputs, engine.profiles, shapes, files, [], 0)
    log.line("Input shapes: " + ", ".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in inputs.items()))
    summary = _bench(engine, inputs, args, log)
    if summary is not None:
        doc = summary.to_json()
        doc.pop("times", None)
        log.doc["performance"] = doc
    if args.dumpOutput or args.exportOutput:
        outs = engine.create_execution_context().infer(inputs)
        if args.dumpOutput:
            from .run import format_arrays
            log.line("Output tensors:")
            log.line(format_arrays(outs), raw=True)
        if args.exportOutput:
            import numpy as np
            _write_json(args.exportOutput, [{"name": k, "dimensions": "x".join(map(str, np.shape(v))),
                                             "values": np.asarray(v).astype(float).ravel().tolist()}
                                            for k, v in outs.items()])
    if args.dumpProfile or args.exportProfile:
        _profile(engine, inputs, args, log)
    return 0 if summary is not None else 1


def _device(args) -> str:
    import torch
    d = args.device
    if d is None:
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if d == "cpu" or d.startswith("cuda"):
        return d
    if not d.isdigit():
        raise CLIError(f"--device: expected a GPU index such as 0 (or cpu), got {d!r}")
    return f"cuda:{d}"


def _workspace_bytes(args) -> int | None:
    if args.memPoolSize:
        total = None
        for item in args.memPoolSize.split(","):
            pool, _, size = item.partition(":")
            if pool.strip() != "workspace":
                raise CLIError(f"--memPoolSize: pool {pool.strip()!r} is not supported (only workspace)")
            total = _size(size.strip())
        return total
    return None if args.workspace is None else int(args.workspace * (1 << 20))


def _size(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    mult = units.get(s[-1:].upper(), None)
    try:
        return int(float(s[:-1] if mult else s) * (mult or 1 << 20))
    except ValueError:
        raise CLIError(f"--memPoolSize: bad size {s!r}; expected e.g. workspace:1024 (MiB) or workspace:1G") from None


def _dynamic_dims_to_one(onnx_path: str, log) -> tuple:
    """trtexec's rule for a model with dynamic input dims and no shapes given: every dynamic dim becomes 1, with
    a warning saying so (the engine is then built and run at those shapes)."""
    from ..builder.config import Profile
    from ..frontend.onnx import load_model
    model = load_model(onnx_path)
    inits = {i.name for i in model.graph.initializer}
    fixed = {}
    for v in model.graph.input:
        if v.name in inits or not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
        if any(d < 0 for d in dims):
            fixed[v.name] = tuple(1 if d < 0 else d for d in dims)
            log.line(f"Dynamic dimensions required for input: {v.name}, but no shapes were given. Automatically "
                     f"overriding shape to: {'x'.join(map(str, fixed[v.name]))}", level="W")
    return (Profile.fixed(fixed),) if fixed else ()


def _build(args, shapes, log):
    from .. import build
    from ..builder.config import BuilderConfig, Profile
    from ..errors import ShapeError
    from .loading import plugins_from_args
    from .loading import check_readable, is_engine
    from .progress import Progress
    from .shapes import parse_shapes
    check_readable(args.onnx, "ONNX file")
    if is_engine(args.onnx):
        raise CLIError(f"--onnx {args.onnx!r} is a Kiln engine file; use --loadEngine")
    mins, opts, maxs = args.minShapes, args.optShapes, args.maxShapes
    if mins or maxs:
        if not (len(mins) == len(opts) == len(maxs)):
            raise CLIError("--minShapes, --optShapes and --maxShapes must all be given, once per profile")
        profiles = tuple(Profile(parse_shapes(a, "--minShapes"), parse_shapes(b, "--optShapes"),
                                 parse_shapes(c, "--maxShapes")) for a, b, c in zip(mins, opts, maxs))
    elif opts:
        profiles = tuple(Profile.fixed(parse_shapes(o, "--optShapes")) for o in opts)
    elif shapes:  # trtexec: with only --shapes, the profile is fixed at those shapes
        profiles = (Profile.fixed(shapes),)
    else:
        profiles = _dynamic_dims_to_one(args.onnx, log)
    from .buildflags import quant_fields
    quant = quant_fields(args.int8, args.fp8, args.calib, None, None)
    if args.best:
        log.line("--best: enabling fp16 (int8 needs calibration: add --int8 --calib=CACHE)")
    try:
        config = BuilderConfig(device=_device(args), fp16=args.fp16 or args.best, bf16=args.bf16,
                               int4_weights=args.int4,
                               tf32=not args.noTF32, workspace_bytes=_workspace_bytes(args), profiles=profiles,
                               optimization_level=args.builderOptimizationLevel,
                               timing_cache=args.timingCacheFile, verbosity=1 if args.verbose else 0,
                               strict_types=args.stronglyTyped, layer_precisions=_layer_precisions(args),
                               refittable=args.refit, **quant)
    except ValueError as e:
        raise ShapeError(str(e)) from None
    log.line(f"Building an engine from {args.onnx} for {config.device}")
    progress = Progress("auto")
    try:
        engine = build(args.onnx, config, progress=progress, plugins=plugins_from_args(args))
    finally:
        progress.finish()
    for line in engine.report.summary().splitlines():
        log.line(line)
    if args.saveEngine:
        engine.save(args.saveEngine, weights=not args.stripWeights)
        log.line(f"Engine saved to {args.saveEngine}" + (" (without weights)" if args.stripWeights else ""))
    return engine


def _layer_precisions(args) -> dict[str, str]:
    if not args.layerPrecisions or args.precisionConstraints == "none":
        return {}
    from ..quant.layer_precision import parse_spec
    try:
        return parse_spec(args.layerPrecisions)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _load(args, log):
    from ..engine.runtime import Engine
    from .loading import check_readable, plugins_from_args
    check_readable(args.loadEngine, "engine file")
    if args.onnx:
        check_readable(args.onnx, "ONNX file")
    # An engine built on another device moves to this one (or to --device), its replaced tactics noted.
    engine = Engine.load(args.loadEngine, weights_from=args.onnx, device=_device(args) if args.device else None,
                         plugins=plugins_from_args(args))
    log.line(f"Loaded engine {args.loadEngine} ({engine.num_layers} layers, {engine.device})"
             + (f" with the weights of {args.onnx}" if args.onnx else ""))
    for note in engine.load_notes:
        log.line(f"Load note: {note}")
    return engine


def _bench(engine, inputs, args, log):
    from .measure import BenchSettings, measure
    from .timing import group_averages
    try:
        pct = tuple(float(x) for x in args.percentile.split(",") if x.strip())
    except ValueError:
        raise CLIError(f"--percentile: expected numbers such as 90,95,99, got {args.percentile!r}") from None
    streams = args.infStreams or args.streams or 1
    s = BenchSettings(streams=streams, warmup_ms=args.warmUp, iterations=args.iterations, duration_s=args.duration,
                      cuda_graphs=args.useCudaGraph, transfers=not args.noDataTransfers, spin_wait=args.useSpinWait,
                      sleep_ms=args.sleepTime, percentiles=pct)
    log.line(f"Running: {streams} context(s), warm-up {args.warmUp:g} ms, >= {args.iterations} iterations and "
             f">= {args.duration:g} s; CUDA graphs {'on' if args.useCudaGraph else 'off'}; data transfers "
             f"{'off' if args.noDataTransfers else 'on'}")
    summary = measure(engine, inputs, s)
    if args.avgRuns > 0:
        for comp, lat, enq in group_averages(summary.records, args.avgRuns)[:10]:
            log.line(f"Average on {args.avgRuns} runs - compute latency: {comp:.5g} ms - host latency: {lat:.5g} ms "
                     f"(enqueue {enq:.5g} ms)")
    for line in summary.lines():
        log.line(line)
    for w in summary.warnings():
        log.line(f"* {w}", level="W")
    if args.exportTimes:
        _write_json(args.exportTimes, trtexec_times(summary))
        log.line(f"Timings written to {args.exportTimes}")
    return summary


def _profile(engine, inputs, args, log) -> None:
    from .layerprof import profile_layers, profile_table
    runs = max(args.iterations, 1)
    rows = profile_layers(engine, inputs, runs=runs)
    from .layerprof import latency_check
    if (warning := latency_check(engine, inputs, rows, runs=runs)) is not None:
        log.line(warning, level="W")
    if args.dumpProfile:
        log.line(f"Per-layer profile (median of {runs} runs, layer by layer):")
        for line in profile_table(rows).splitlines():
            log.line(line)
    if args.exportProfile:
        # trtexec's layout: a count, then one record per layer (percentage of the summed medians).
        _write_json(args.exportProfile, [{"count": runs}] + [
            {"name": r["name"], "op": r["op"], "timeMs": r["total_ms"], "averageMs": r["mean_ms"],
             "medianMs": r["ms"], "percentage": r["share"] * 100} for r in rows])


def trtexec_times(summary) -> list[dict]:
    """--exportTimes in trtexec's layout: one record per inference, times in ms from the start of measuring.

    Kiln measures phase durations, not phase timestamps; the phases are laid end to end from the start of
    the inference (H2D, compute, D2H), which is how they run on one stream.
    """
    out = []
    for r in summary.records:
        h2d_end = r.start_ms + r.h2d_ms
        comp_end = h2d_end + r.compute_ms
        out.append({"startEnqMs": r.start_ms, "endEnqMs": r.start_ms + r.enqueue_ms, "startH2dMs": r.start_ms,
                    "endH2dMs": h2d_end, "startComputeMs": h2d_end, "endComputeMs": comp_end,
                    "startD2hMs": comp_end, "endD2hMs": comp_end + r.d2h_ms, "h2dMs": r.h2d_ms,
                    "computeMs": r.compute_ms, "d2hMs": r.d2h_ms, "latencyMs": r.latency_ms,
                    "enqueueMs": r.enqueue_ms, "context": r.context})
    return out


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


class _Log:
    """trtexec's '[I] ...' line style on stdout; warnings as '[W]'. ``silent`` (--quiet, --json) drops the lines;
    ``doc`` collects what --json prints."""

    def __init__(self, silent: bool = False):
        self.silent = silent
        self.doc: dict = {}

    def line(self, text: str, level: str = "I", raw: bool = False) -> None:
        if not self.silent:
            print(text if raw else f"[{level}] {text}", file=sys.stdout, flush=True)


def add_parser(sub, common) -> argparse.ArgumentParser:
    # Listed in `kiln --help` only: main() hands `kiln exec ...` to main() above before argparse sees it,
    # since trtexec's camelCase flags need their own parser.
    return sub.add_parser("exec", help="trtexec-compatible flags (--onnx, --saveEngine, --loadEngine, --shapes, ...)",
                          add_help=False)
