"""The BuilderConfig flags shared by `kiln build`, `bench`, `run`, `inspect` and `compare` (the last four
build in memory when given an ONNX file), and turning them into a BuilderConfig."""
from __future__ import annotations

import argparse

from .errors import CLIError
from .shapes import parse_shapes


def add_build_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("build options (used when the model is an ONNX file)")
    g.add_argument("--device", default="auto",
                   help="device to build for: cpu, cuda or cuda:N; 'auto' (default) picks cuda when available")
    g.add_argument("--fp16", action="store_true", help="allow float16 kernels in addition to float32")
    g.add_argument("--bf16", action="store_true", help="allow bfloat16 kernels in addition to float32")
    g.add_argument("--auto-bf16", action="store_true",
                   help="allow bfloat16 kernels where the device computes them natively (CPU: AVX512-BF16 or AMX; "
                        "GPU: compute capability 8.0+), else float32 only; the report says which")
    g.add_argument("--int8", action="store_true",
                   help="allow int8 layers (needs --calib-cache or --calib-data)")
    g.add_argument("--fp8", action="store_true", help="allow fp8 layers (as --int8)")
    g.add_argument("--int4", action="store_true",
                   help="INT4 weight-only: MatMul/Gemm weights as 4-bit blocks (com.microsoft::MatMulNBits)")
    g.add_argument("--calib-cache", metavar="FILE",
                   help="int8 calibration cache: read when it exists, written after calibrating")
    g.add_argument("--calib-data", metavar="DIR", help="folder of .npz input batches to calibrate int8 with")
    g.add_argument("--calib-method", metavar="NAME",
                   help="minmax, entropy, entropy2 (default) or percentile[:P]")
    g.add_argument("--tf32", action="store_true",
                   help="allow TF32 in float32 matmuls/convolutions on CUDA (faster; off by default, as in "
                        "onnxruntime: fp32 engines then match float32 references)")
    g.add_argument("--no-tf32", action="store_true", help="forbid TF32 (the default; kept for old scripts)")
    g.add_argument("--shapes", metavar="SPEC",
                   help="fixed input shapes, e.g. x:1x3x224x224,mask:1x128 (a profile with min=opt=max)")
    g.add_argument("--min-shapes", metavar="SPEC", action="append", default=[],
                   help="smallest shapes of an optimization profile; repeat --min/--opt/--max-shapes to add "
                        "more profiles (the i-th of each flag form profile i)")
    g.add_argument("--opt-shapes", metavar="SPEC", action="append", default=[],
                   help="shapes to optimize for in a profile; alone, it stands for min=opt=max")
    g.add_argument("--max-shapes", metavar="SPEC", action="append", default=[],
                   help="largest shapes of an optimization profile")
    g.add_argument("--workspace", metavar="MIB", type=float,
                   help="limit on activation memory + scratch, in MiB (default: no limit)")
    g.add_argument("--opt-level", type=int, default=3, choices=range(6), metavar="0-5",
                   help="0: no graph optimization ... 5: widest search (default 3)")
    g.add_argument("--timing-cache", metavar="FILE", help="read/write tactic timings from/to FILE")
    g.add_argument("--tuning-budget", metavar="SECONDS", type=float,
                   help="time limit for tactic tuning; layers left when it runs out keep their default tactic")
    g.add_argument("--tactic-replay", metavar="FILE",
                   help="take every layer's tactic from FILE (written by kiln.tune.export_choices); time nothing")
    g.add_argument("--no-layer-threads", action="store_true",
                   help="CPU: run every layer on all threads (by default layers measured at build to run better on "
                        "one thread run on one)")
    g.add_argument("--no-cuda-graphs", action="store_true",
                   help="build an engine whose contexts run eagerly instead of replaying CUDA graphs")
    g.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="run convolutions in NHWC layout (auto: on for CUDA)")
    g.add_argument("--strict-types", action="store_true", help="keep the model's own types (no reduced precision)")
    g.add_argument("--onnxruntime-fallback", action="store_true",
                   help="run ops Kiln has no kernel or plugin for through onnxruntime on the host (each one is "
                        "listed in the build report) instead of refusing the model")
    g.add_argument("--refittable", action="store_true",
                   help="keep the ONNX initializers in the engine so kiln.Refitter can give it new weights")


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise CLIError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    return device


def profiles_from_args(args) -> tuple:
    from ..builder.config import Profile
    profiles = []
    if args.shapes:
        profiles.append(Profile.fixed(parse_shapes(args.shapes, "--shapes")))
    mins, opts, maxs = args.min_shapes, args.opt_shapes, args.max_shapes
    if mins or maxs:
        if not (len(mins) == len(opts) == len(maxs)):
            raise CLIError(f"each optimization profile needs --min-shapes, --opt-shapes and --max-shapes (got "
                           f"{len(mins)}, {len(opts)} and {len(maxs)}); or give --opt-shapes alone for fixed shapes")
        for lo, opt, hi in zip(mins, opts, maxs):
            profiles.append(Profile(parse_shapes(lo, "--min-shapes"), parse_shapes(opt, "--opt-shapes"),
                                    parse_shapes(hi, "--max-shapes")))
    else:
        profiles += [Profile.fixed(parse_shapes(o, "--opt-shapes")) for o in opts]
    for i, p in enumerate(profiles):
        if not (set(p.min) == set(p.opt) == set(p.max)):
            raise CLIError(f"profile {i}: --min-shapes, --opt-shapes and --max-shapes must name the same inputs "
                           f"(got {sorted(p.min)}, {sorted(p.opt)}, {sorted(p.max)})")
    return tuple(profiles)


# Build flags that also mean something when running an engine file (the run's shapes, the device to check).
_ALSO_RUN_FLAGS = {"shapes", "device"}


def flags_ignored_for_engine(args) -> list[str]:
    """The build flags the user gave that an engine file cannot honour (it is built already)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_build_flags(parser)
    given = []
    for action in parser._actions:
        if action.dest in _ALSO_RUN_FLAGS or not action.option_strings:
            continue
        if getattr(args, action.dest, action.default) != action.default:
            given.append(action.option_strings[-1])
    return given


def config_from_args(args, **extra):
    """A BuilderConfig from the parsed build flags; ``extra`` overrides fields (e.g. verbosity)."""
    from ..builder.config import BuilderConfig
    from ..errors import ShapeError
    quant = quant_fields(args.int8, args.fp8, args.calib_cache, args.calib_data, args.calib_method)
    profiles = profiles_from_args(args)
    try:
        return BuilderConfig(
            device=resolve_device(args.device), fp16=args.fp16,
            bf16="auto" if args.auto_bf16 and not args.bf16 else args.bf16,
            tf32=args.tf32 and not args.no_tf32,
            workspace_bytes=None if args.workspace is None else int(args.workspace * (1 << 20)),
            profiles=profiles, optimization_level=args.opt_level, timing_cache=args.timing_cache,
            tuning_budget_s=getattr(args, "tuning_budget", None), tactic_replay=getattr(args, "tactic_replay", None),
            cuda_graphs=not args.no_cuda_graphs, layer_threads=not args.no_layer_threads,
            channels_last={"auto": None, "on": True, "off": False}[args.channels_last],
            strict_types=args.strict_types, onnxruntime_fallback=args.onnxruntime_fallback,
            int4_weights=getattr(args, "int4", False),
            refittable=getattr(args, "refittable", False), verbosity=min(getattr(args, "verbose", 0), 2), **quant,
            **extra)
    except ValueError as e:
        raise ShapeError(str(e)) from None


def quant_fields(int8, fp8, cache, data, method) -> dict:
    """BuilderConfig's quantization fields from the flags (empty when none is given)."""
    if not any((int8, fp8, cache, data, method)):
        return {}
    out = {"int8": bool(int8), "fp8": bool(fp8)}
    if cache:
        out["calibration_cache"] = cache
    if data:
        from pathlib import Path
        if not Path(data).is_dir():
            raise CLIError(f"calibration data folder {data!r} does not exist or is not a folder")
        out["int8_calibrator"] = data
    if method:
        out["calibration_method"] = method
    return out
