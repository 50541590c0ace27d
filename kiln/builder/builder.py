"""The whole build: parse, optimize, tune, lower to a Plan, run the steps over it, and build the Engine last.

    model ──parse──▶ Graph ──passes──▶ optimized Graph ──tune──▶ choices ──lower──▶ Plan
          ──mark_concats_in_place──▶ Plan ──plan_activation_memory──▶ Plan ──▶ Engine(graph, header, binding)

The Engine is constructed once, as the last step, from the plan, the header and the weights the plan's graph
holds; nothing edits it, its header, its report or its program afterwards (tests/builder/test_lowering.py).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import BuildError, ShapeError
from ..ir.graph import Graph
from ..ir.types import TensorType
from ..ops import Registry, default_registry
from ..passes.context import PassContext
from ..passes.pipeline import run_pipeline
from .config import BuilderConfig, Profile
from .concat_in_place import mark_concats_in_place
from .lower import describe_layers, lower
from .memory_plan import plan_activation_memory
from .plan import Plan
from ..engine.report import BuildReport

if TYPE_CHECKING:
    from ..plugin import PluginLibrary
    from ..tactics import TacticLibrary

log = logging.getLogger("kiln.build")


def build(model: Any, config: BuilderConfig | None = None, progress: Callable | None = None, *,
          tactics: TacticLibrary | None = None, pipeline: Sequence | None = None, plugins: PluginLibrary | None = None,
          example_inputs: Any = None, exporter: str = "torchscript", debug_tensors: Sequence[str] = (),
          **overrides) -> "Engine":
    """Build an engine from a model path, bytes, onnx.ModelProto, kiln Graph, or torch.nn.Module.

    A torch.nn.Module is exported first with torch.onnx.export (kiln/frontend/torch_export.py) on
    ``example_inputs`` (a tensor or tuple of tensors); its inputs are named after ``forward``'s parameters, and
    dims that the profiles let vary are exported dynamic. ``exporter``: "torchscript" (default) or "dynamo".

    ``overrides`` are BuilderConfig fields: ``kiln.build("m.onnx", device="cuda", fp16=True)``.
    ``tactics``: the candidate implementations to tune and bind (a kiln.tactics.TacticLibrary; default:
    kiln.tactics.DEFAULT; ``DEFAULT.with_triton_on_cpu()`` also offers Triton tactics on a CPU, in Triton's
    interpreter: KilnError unless the process runs under TRITON_INTERPRET=1). ``pipeline``: the graph passes to
    run (default: kiln.passes.pipeline.DEFAULT_PIPELINE).
    ``plugins``: custom ops (a kiln.plugin.PluginLibrary): their nodes run the plugin's reference or a tactic the
    tuner timed and checked; the engine records each plugin used (name, version, signature hash), and loading it
    needs the same plugins (``Engine.load(path, plugins=)``).
    ``debug_tensors``: names of tensors of the model (inputs, initializers or node outputs) to keep observable in
    the engine (TensorRT's debug tensors): each becomes an extra output of the build after the model's own, so no
    pass fuses it away or overwrites it, and the engine lists them (``Engine.debug_tensors``); a run hands their
    values to a ``debug`` callback (``ExecutionContext.infer``). Marking a tensor can cost the fusions it took part
    in, as in TensorRT.
    ``progress``, if given, is called as ``progress(stage, done, total, message)`` as the build advances
    (stages: "parse", "passes", "layers", "tune", "memory"); it only observes, it cannot change the build.
    """
    report_progress = progress or (lambda *a: None)
    from ..engine import device_info
    from ..engine.binding import resolve_device
    from ..engine.runtime import Engine
    from ..engine.source import record as source_record
    from ..quant.calibrate import copy_graph
    device_chosen = config is not None or "device" in overrides
    config = (config or BuilderConfig()).replace(**overrides) if overrides else (config or BuilderConfig())
    config, auto_note = config.resolve_auto()
    if not device_chosen and config.device == "cpu" and _gpu_present():
        msg = ("building for the CPU (BuilderConfig.device's default) although a GPU is present: pass "
               "device='cuda' to build for it (the kiln CLI picks the GPU by default)")
        log.warning(msg)
        auto_note = f"{auto_note}; {msg}" if auto_note else msg
    t0 = time.perf_counter()
    registry = (plugins.registry() if plugins is not None else None) or default_registry()
    if plugins is not None and len(plugins):
        tactics = plugins.tactics(tactics)
    if tactics is not None and tactics.triton_on_cpu and resolve_device(config.device).type == "cpu":
        from ..backends.triton import require_interpreter
        require_interpreter()  # said now, not as every Triton candidate's failure in the tuner
    device = device_info.describe(config.device)
    report_progress("parse", 0, 1, "reading the model")
    if _is_module(model):
        from ..frontend.torch_export import export_module
        report_progress("parse", 0, 1, f"exporting {type(model).__name__} to ONNX ({exporter})")
        model = export_module(model, example_inputs, config.profiles, exporter)
    elif example_inputs is not None:
        raise BuildError("example_inputs is for building a torch.nn.Module (it is exported to ONNX with them); "
                         "an ONNX model's input shapes come from the model and the profiles")
    graph = _as_graph(model, registry, config.onnxruntime_fallback)
    source = source_record(graph)  # what a weight-stripped or refitted engine checks its new weights against
    output_names = [v.name for v in graph.outputs]
    debug_names = add_debug_outputs(graph, debug_tensors)  # after the record: a model has no debug outputs
    source_graph = copy_graph(graph) if config.refittable else None
    report_progress("parse", 1, 1, "model read")
    onnx_nodes = sum(1 for _ in graph.all_nodes())
    _check_profiles(graph, config)
    static_shapes = static_input_shapes(graph, config)
    ctx = PassContext(graph, config, registry, static_shapes)
    if auto_note:
        ctx.notes.append(auto_note)
        log.info(auto_note)
    for label, op in graph.meta.get("onnxruntime_fallback", ()):
        msg = (f"layer {label} ({op}) runs through onnxruntime on the host (onnxruntime_fallback): no Kiln kernel "
               f"or plugin implements it")
        log.warning(msg)
        ctx.notes.append(msg)
    unbounded = _unbounded_dims(graph, config)
    if unbounded:
        msg = _no_profile_message(unbounded)
        log.warning(msg)
        ctx.notes.append(msg)
    timings = run_pipeline(graph, ctx, pipeline, progress=progress)
    graph.toposort()
    graph.verify()
    name_debug_outputs(graph, debug_names)

    opt_shapes = profile_shapes(graph, config, "opt")
    from ..passes.propagate import propagate
    report_progress("layers", 0, 1, "describing layers")
    facts_opt = propagate(graph, opt_shapes, registry)
    report = BuildReport(onnx_nodes=onnx_nodes)
    report.layers = describe_layers(graph, facts_opt, registry)
    report.rejections = [r.to_json() for r in ctx.rejections]
    report.fusions = dict(ctx.applied)
    report.pass_seconds = [(n, round(s, 6)) for n, s in timings]
    report.notes = list(ctx.notes)
    report.quantization = graph.meta.pop("quantization", {})
    report_progress("layers", 1, 1, f"{len(report.layers)} layers")
    tuned, choices = _tune(graph, config, facts_opt, device, progress, registry, tactics)
    if tuned is not None:
        report.tuning = tuned.to_json()
        if tuned.budget_exceeded:
            report.notes.append(f"tuning budget of {config.tuning_budget_s}s exceeded: "
                                f"{len(tuned.untuned_for_budget)} layers kept their default tactic "
                                f"(e.g. {', '.join(tuned.untuned_for_budget[:3])})")
    annotate_types(graph, facts_opt, config, registry)

    # Lowering, then the steps over the plan, each with one job (plan.py).
    plan = lower(graph, choices, resolve_device(config.device), registry, tactics)
    _report_tactics(report, plan.binding.choices, tuned)
    report.notes += plan.binding.notes
    report_progress("memory", 0, 1, "planning activation memory")
    plan = mark_concats_in_place(plan)
    plan = plan_activation_memory(plan, profile_shapes(graph, config, "max"))
    if config.layer_threads and config.optimization_level >= 2 and config.tactic_replay is None:
        _choose_layer_threads(plan, config, ctx, report)
    _report_plan(report, plan, config)
    report_progress("memory", 1, 1, "memory planned")

    header = {
        "config": config.to_json(), "output_names": output_names, "device": device,
        "versions": device_info.versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "producer": graph.meta.get("producer", ""), "source": source,
    }
    if debug_names:  # absent otherwise: an engine without debug tensors is written as before
        header["debug_tensors"] = debug_names
    if plugins is not None and (records := plugins.records(graph)):
        header["plugins"] = records
    header.update(plan.header_fields())
    report.build_seconds = round(time.perf_counter() - t0, 4)
    if config.verbosity >= 1:
        log.info("build finished:\n%s", report.summary())
    # Last: the engine, from the plan (its graph and binding), the header and the report; never edited after.
    return Engine(plan.graph, header, report, registry, tactics, source_graph=source_graph, plugins=plugins,
                  binding=plan.binding)


def add_debug_outputs(graph: Graph, names: Sequence[str]) -> list[str]:
    """Append the values named ``names`` (inputs, constants or node outputs of the main graph) to
    ``graph.outputs``, after the model's own outputs and in the order given (repeats dropped), so that the passes
    keep them as they keep outputs: not fused away, not freed or overwritten. Returns the names appended.
    BuildError for a name the graph does not have."""
    names = list(dict.fromkeys(str(n) for n in names))
    if not names:
        return []
    by_name = {v.name: v for v in graph.values()}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise BuildError(f"debug tensor(s) {missing} are not tensors of the model (its inputs, initializers or "
                         f"node outputs); tensors of subgraphs cannot be marked")
    graph.outputs = list(graph.outputs) + [by_name[n] for n in names]
    return names


def name_debug_outputs(graph: Graph, names: Sequence[str]) -> None:
    """After the passes: give the last ``len(names)`` outputs (the debug tensors) their marked names again. A pass
    that drops a no-op may hand an output over to the value it copied, of another name; the engine file records
    each debug tensor under the name of the value it labels (checked at load, kiln/engine/validate.py)."""
    if not names:
        return
    taken = {v.name: v for v in graph.values()}
    for name, v in zip(names, graph.outputs[len(graph.outputs) - len(names):]):
        if v.name == name:
            continue
        other = taken.get(name)
        if (other is not None and other is not v) or v in graph.inputs:
            raise BuildError(f"debug tensor {name!r} became the value {v.name!r} in the optimized graph, and "
                             f"cannot take its name back{' (it is a network input)' if v in graph.inputs else ''}")
        if v.const is not None and graph.constants.get(v.name) is v:
            graph.constants[name] = graph.constants.pop(v.name)
        taken.pop(v.name, None)
        v.name = name
        taken[name] = v


def _report_plan(report: BuildReport, plan: Plan, config: BuilderConfig) -> None:
    """The plan steps' results in the build report: Concats done in place, refusals, the memory plan; a
    memory plan over the workspace limit fails the build."""
    if plan.concat_inputs_in_place:
        report.fusions["concat_in_place"] = plan.concat_inputs_in_place
        by_name = {layer.name: layer for layer in report.layers}
        for n in plan.graph.nodes:
            if n.attrs.get("in_place") and n.label in by_name:
                by_name[n.label].kernel += f"[{len(n.attrs['in_place'])}/{len(n.inputs)} inputs in place]"
    report.rejections += list(plan.rejections)
    report.notes += plan.notes
    if plan.memory is not None:
        report.memory = plan.memory.to_json()
        if config.workspace_bytes is not None and plan.memory.arena_bytes > config.workspace_bytes:
            raise BuildError(f"activation memory at the largest profile shapes needs {plan.memory.arena_bytes} "
                             f"bytes, over the workspace limit of {config.workspace_bytes} bytes: raise the limit "
                             f"or lower the profile's max shapes")


def _tune(graph: Graph, config: BuilderConfig, facts, device_desc: dict, progress: Callable | None,
          registry: Registry, tactics: TacticLibrary | None):
    """Choose each layer's tactic (kiln.tune): replayed, from the timing cache, or timed on the device.
    Returns (the tuning result or None, {layer label: choice JSON}); layers left at their default have no
    choice (the lowering stores the choices on the nodes)."""
    replay = None
    if config.tactic_replay:
        from ..tune import load_choices
        replay = load_choices(config.tactic_replay)
    elif config.optimization_level < 2:
        return None, {}
    from ..engine import device_info
    from ..engine.binding import bind_constants, resolve_device
    from ..tune import TimingCache, Tuner
    dev = resolve_device(config.device)
    versions = dict(device_info.versions())
    try:
        import triton
        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    cache = TimingCache.load(config.timing_cache)
    tuner = Tuner(dev, config.optimization_level, cache, tf32=config.tf32, budget_s=config.tuning_budget_s,
                  device_desc=device_desc, versions=versions, tactics=tactics, registry=registry)
    constants = bind_constants(graph, dev, registry)
    skip = None
    if dev.type == "cuda":  # layers placed on the host (shape arithmetic) keep the op's own kernel
        from ..engine.placement import plan_placement
        skip = set(plan_placement(graph, registry).host_nodes)
    result = tuner.tune_graph(graph, facts, constants, progress, replay, skip)
    del constants
    choices = {}
    for n in graph.nodes:
        r = result.layers.get(n.label)
        if r is not None and r.source != "default":
            choices[n.label] = r.choice.to_json()
    if config.timing_cache and replay is None and cache._new:
        try:
            cache.save()
        except OSError as e:
            log.warning("timing cache %r could not be written: %s", config.timing_cache, e)
    return result, choices


def _choose_layer_threads(plan: Plan, config: BuilderConfig, ctx: PassContext, report: BuildReport) -> None:
    """A step over the plan: CPU layers measured faster on one thread run on one (kiln/tune/layer_threads.py,
    marks on the plan's graph that the Engine's program reads); the report says which."""
    import torch
    graph = plan.graph
    if plan.binding.device.type != "cpu":
        return
    from ..passes.quantize_target import generated_sample
    from ..tune.layer_threads import Skipped, choose_layer_threads
    feeds = generated_sample(graph, ctx, batches=1)
    try:
        chosen, switched = choose_layer_threads(graph, plan.binding, plan.registry, feeds)
    except Skipped as e:
        msg = f"per-layer thread choice skipped: {e}"
        log.info(msg)
        report.notes.append(msg)
        return
    except Exception as e:  # noqa: BLE001 - an optimization: the engine runs every layer on all threads instead
        for n in graph.nodes:
            n.meta.pop("threads", None)
        msg = f"per-layer thread choice skipped: the timing run failed ({type(e).__name__}: {e})"
        log.warning(msg)
        report.notes.append(msg)
        return
    if chosen and len(chosen) == len(graph.nodes):
        report.notes.append(f"every layer runs on one thread: the whole model measured at build faster so than "
                            f"on {torch.get_num_threads()} (kiln/tune/layer_threads.py)")
    elif chosen:  # a note, not the layers' kernel names: those stay what the tactic is, whatever the timing said
        report.notes.append(f"{len(chosen)} of {len(graph.nodes)} layers run on one thread: measured at build at "
                            f"least {1 / 0.8:.2f}x faster than on {torch.get_num_threads()} (kiln/tune/layer_threads.py): "
                            f"{', '.join(sorted(chosen))}")
    if switched:  # their tactic was chosen on all threads; on one, the op's own kernel measured faster
        for info in report.layers:
            if info.name in switched:
                info.tactic = plan.binding.choices[info.name].label
                tuned_ms = (info.candidates or {}).get(info.tactic)  # the tuner's time (all threads) of what runs
                info.time_ms = tuned_ms if isinstance(tuned_ms, float) else None
        report.notes.append(f"{len(switched)} of them run their op's own kernel instead of the tactic tuned on "
                            f"{torch.get_num_threads()} threads (own vs tactic ms, one thread): "
                            + ", ".join(f"{k} {a:.3f} vs {b:.3f}" for k, (a, b) in sorted(switched.items())))


def _report_tactics(report: BuildReport, choices: dict, tuned) -> None:
    """Each layer's bound tactic (``choices``: {label: Choice}) and, when tuned, its time and candidates."""
    for info in report.layers:
        c = choices.get(info.name)
        if c is not None:
            info.tactic = c.label
        r = tuned.layers.get(info.name) if tuned is not None else None
        if r is not None:
            info.time_ms = r.time_ms
            info.candidates = {**r.times, **r.rejected}


def _gpu_present() -> bool:
    import torch
    return torch.cuda.is_available()


def _is_module(model: Any) -> bool:
    import sys
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _as_graph(model: Any, registry: Registry, onnxruntime_fallback: bool = False) -> Graph:
    from ..frontend.onnx import parse
    if isinstance(model, Graph):
        # Build on a copy: the caller's graph stays as it was.
        from ..engine.graph_json import decode_graph, encode_graph
        plan, tensors = encode_graph(model)
        g = decode_graph(plan, tensors)
        g.meta = dict(model.meta)
        return g
    return parse(model, registry=registry, onnxruntime_fallback=onnxruntime_fallback)


def _check_profiles(graph: Graph, config: BuilderConfig) -> None:
    names = {v.name: v for v in graph.inputs}
    for i, p in enumerate(config.profiles):
        for n in p.names():
            if n not in names:
                raise ShapeError(f"profile {i} names input {n!r}, which the model does not have; inputs are "
                                 f"{', '.join(repr(k) for k in names)}")
            declared = getattr(names[n].type, "shape", None)
            if declared is not None:
                for which in ("min", "max"):
                    s = getattr(p, which)[n]
                    if len(s) != len(declared) or any(isinstance(d, int) and d != x for d, x in zip(declared, s)):
                        raise ShapeError(f"profile {i} {which} shape {list(s)} for input {n!r} does not fit the "
                                         f"model's declared shape {list(declared)}")


def _unbounded_dims(graph: Graph, config: BuilderConfig) -> dict[str, list]:
    """input name -> its dynamic dims (names or positions) that no profile gives shapes for."""
    covered = {n for p in config.profiles for n in p.names()}
    out = {}
    for v in graph.inputs:
        shape = getattr(v.type, "shape", None)
        if v.name in covered or shape is None:
            continue
        dyn = [d if isinstance(d, str) else f"dim {i}" for i, d in enumerate(shape) if not isinstance(d, int)]
        if dyn:
            out[v.name] = dyn
    return out


def _no_profile_message(unbounded: dict[str, list]) -> str:
    dims = "; ".join(f"{name!r}: {', '.join(map(str, d))}" for name, d in unbounded.items())
    example = next(iter(unbounded))
    return (f"dynamic input dims without an optimization profile ({dims}): layers whose shapes depend on them are "
            f"not tuned and their memory is not planned ahead. Give the shapes the engine will see: "
            f"BuilderConfig(profiles=(Profile.of({example}=(min_shape, opt_shape, max_shape)),)), or on the CLI "
            f"--min-shapes/--opt-shapes/--max-shapes {example}:1x...  (--shapes {example}:... for one fixed shape)")


def static_input_shapes(graph: Graph, config: BuilderConfig) -> dict[str, tuple]:
    """Input shapes with every dim that all profiles pin (min == max) made concrete; others stay symbolic."""
    out = {}
    for v in graph.inputs:
        t = v.type
        if not isinstance(t, TensorType) or t.shape is None:
            continue
        dims = list(t.shape)
        for i, d in enumerate(dims):
            vals = set()
            for p in config.profiles:
                if v.name in p.min:
                    lo, hi = p.min[v.name][i], p.max[v.name][i]
                    vals.add(lo if lo == hi else None)
            if len(vals) == 1 and None not in vals:
                dims[i] = vals.pop()
            elif not isinstance(d, int) and d is None:
                dims[i] = f"{v.name}_dim{i}"
        out[v.name] = tuple(dims)
    return out


def profile_shapes(graph: Graph, config: BuilderConfig, which: str) -> dict[str, tuple] | None:
    if not config.profiles:
        return None
    if which == "max":  # the largest over all profiles, per dim
        out: dict[str, list[int]] = {}
        for p in config.profiles:
            for n, s in p.max.items():
                cur = out.setdefault(n, list(s))
                out[n] = [max(a, b) for a, b in zip(cur, s)]
        return {k: tuple(v) for k, v in out.items()}
    return dict(getattr(config.profiles[0], which))


def annotate_types(graph: Graph, facts, config: BuilderConfig | None = None,
                   registry: Registry | None = None) -> None:
    """Record the inferred dtypes on values whose declared type had none (shapes stay as declared), and give the
    graph outputs declared without a shape (a kiln.trt network declares none) their shape over the profiles:
    a dim that is the same at ``facts`` (the opt shapes) and at every profile's min and max is that number,
    any other a named dynamic dim. The engine's I/O shapes come from here (``ICudaEngine.get_tensor_shape``:
    a caller sizes its output buffers from them). An output whose shape depends on data stays undeclared."""
    for n in graph.nodes:
        for o in n.outputs:
            if o is None or not isinstance(o.type, TensorType) or o.type.dtype is not None:
                continue
            t = facts.types.get(o.id)
            if isinstance(t, TensorType) and t.dtype is not None:
                o.type = TensorType(t.dtype, o.type.shape)
    shapeless = [v for v in graph.outputs if isinstance(v.type, TensorType) and v.type.shape is None]
    if not shapeless:
        return
    runs = [facts]
    if config is not None and config.profiles:
        from ..passes.propagate import propagate
        runs += [propagate(graph, dict(getattr(p, which)), registry)
                 for p in config.profiles for which in ("min", "max")]
    for v in shapeless:
        shapes = [f.shape(v) for f in runs]
        if any(s is None or not all(isinstance(d, int) for d in s) for s in shapes) or \
                len({len(s) for s in shapes}) != 1:
            continue
        v.type = TensorType(v.type.dtype, tuple(
            d if all(s[i] == d for s in shapes) else f"{v.name}_dim{i}" for i, d in enumerate(shapes[0])))


__all__ = ["build", "BuilderConfig", "Profile"]
