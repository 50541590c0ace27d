"""Engine weights from an ONNX graph's initializers, without rebuilding: the refit of refittable and
weight-stripped engines.

How: the build's graph passes run again on the ONNX graph with the new initializers, under the engine's own
build configuration and with every decision that measured data pinned as the build made it (the layers the
accuracy target kept in higher precision, the int8 activation scales). The passes are where weights are
transformed (BatchNorm folded into convolutions, Q/K/V merged, layouts and transposes, epilogue scales,
quantization), so replaying them computes every engine constant exactly as a fresh build of the new weights
would, whatever pass made it, with no per-pass recipe to keep in step with the passes.

Then the safety check: the replayed graph must be the engine's graph node for node (ops, attributes, value
types, precisions), constants aside. A pass whose decision depended on the old weights' values and went the
other way now (a constant folded differently, a weight that became all zeros) gives another graph, and the
refit is refused, saying where the graphs part; it is never silently wrong. Nothing is tuned or memory-planned
again (tactics stay as stored and are bound to the new weights at load), nor calibrated unless the caller asks.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import FusedStepError, ModelMismatchError
from ..ir.graph import Graph
from ..ops import Registry
from ..ops.fused_steps import AddQuantized, parse_step

__all__ = ["replay_weights", "merge_weights", "weights_from_onnx"]

# Plan fields kept from the engine, not compared: the tactic the tuner chose and the layers measured to run on one
# thread (meta), and Concat inputs written in place (attribute, decided from the memory plan), all written after
# the passes; and the accuracy target's mark on the layers it kept in float32 (meta), which the replay pins by
# layer_precisions instead: what the mark does, the layer's precision and types, is compared.
_KEPT_META = ("tactic", "keep_float32", "threads")
_KEPT_ATTRS = ("in_place",)


def replay_weights(source: Graph, config_json: dict, report: Any, engine_plan: dict, registry: Registry,
                   calibration_data: Any = None, debug_tensors=()) -> tuple[dict, dict[str, torch.Tensor]]:
    """(plan, weights) for an engine whose plan is ``engine_plan``, computed from the initializers of
    ``source`` (the parsed ONNX graph; consumed). Raises ModelMismatchError when the passes make another graph.
    ``calibration_data`` (BuilderConfig.int8_calibrator's forms): the quantized layers' activation scales are
    calibrated anew on it, instead of the engine's own being kept. ``debug_tensors``: the engine's debug tensor
    names (header field 'debug_tensors'), the last outputs of ``source``, named again after the passes as the
    build names them."""
    from ..engine.graph_json import encode_graph
    from ..passes.context import PassContext
    from ..passes.pipeline import run_pipeline
    from ..passes.propagate import propagate
    from .builder import annotate_types, name_debug_outputs, profile_shapes, static_input_shapes
    with tempfile.TemporaryDirectory(prefix="kiln-refit-") as tmp:
        config = _replay_config(config_json, report, Path(tmp), calibration_data)
        ctx = PassContext(source, config, registry, static_input_shapes(source, config))
        run_pipeline(source, ctx)
    source.toposort()
    name_debug_outputs(source, list(debug_tensors))
    annotate_types(source, propagate(source, profile_shapes(source, config, "opt"), registry), config, registry)
    plan, weights = encode_graph(source)
    return merge_weights(engine_plan, plan, scales=calibration_data is not None), weights


def _replay_config(config_json: dict, report: Any, tmp: Path, calibration_data: Any = None):
    """The engine's build configuration, with what the build measured fixed as it was: nothing is measured
    again, nor calibrated unless ``calibration_data`` is given (a refit gives the engine the build made, for
    other weights)."""
    from .config import BuilderConfig
    config = BuilderConfig.from_json(config_json)
    pins = dict(config.layer_precisions)
    quant = getattr(report, "quantization", None) or {}
    for kept in (quant.get("accuracy") or {}).get("kept", []):
        if isinstance(kept, dict) and isinstance(kept.get("layer"), str):
            pins[kept["layer"]] = kept.get("precision", "fp32")
    changes: dict[str, Any] = dict(accuracy_target=None, validation_data=None, int8_calibrator=None,
                                   timing_cache=None, tactic_replay=None, calibration_cache=None)
    quantized = quant.get("layers") or {}
    if isinstance(quantized, dict) and quantized:
        # The layers the build quantized, exactly (an accuracy target may have put others back to float).
        for label, precision in quantized.items():
            pins[label] = "fp8" if "fp8" in str(precision) else "int8"
        changes.update(int8=False, fp8=False)
    changes["layer_precisions"] = pins
    if calibration_data is not None:
        changes["int8_calibrator"] = calibration_data
        return config.replace(**changes)
    stored = _stored_scales(quant.get("scales"))
    if stored is not None:
        from ..quant.cache import Calibration
        cache = tmp / "scales.json"
        Calibration(*stored).save(cache)
        changes["calibration_cache"] = str(cache)
    return config.replace(**changes)


def _stored_scales(scales: Any) -> tuple[dict, str, dict] | None:
    """The build's activation scales (build report ``quantization.scales``) as a calibration cache's scales
    (amax / 127) and SmoothQuant divisors, chosen so that the build's ``amax / 127`` (``/ 448`` for fp8)
    gives back each stored scale bit for bit. None when the build calibrated nothing."""
    from ..engine.fields import arr, fail, number, obj, string
    if not scales:
        return None
    out, smoothing = {}, {}
    for name, rec in obj(scales, "report field 'quantization.scales'").items():
        field = f"report field 'quantization.scales' {name!r}"
        rec = arr(rec, field, 3)
        if len(rec) < 2:
            raise fail(field, "must be [scale, format] or [scale, format, divisors]")
        scale, fmt = number(rec[0], field), string(rec[1], f"{field} format")
        out[name] = _cache_scale(scale, 448.0 if fmt == "fp8e4m3" else 127.0)
        if len(rec) == 3:
            smoothing[name] = [number(x, f"{field} divisors") for x in arr(rec[2], f"{field} divisors")]
    return out, "minmax", smoothing


def _cache_scale(scale: float, qmax: float) -> float:
    """The cache scale s that gives back ``scale``: the build takes amax = s * 127 and divides it by ``qmax``
    (127 for int8, 448 for fp8), so s is the float among the neighbours of scale * qmax / 127 that does so."""
    ideal = scale * qmax / 127.0
    candidates = [ideal]
    lo = hi = ideal
    for _ in range(4):
        lo, hi = math.nextafter(lo, 0.0), math.nextafter(hi, math.inf)
        candidates += [lo, hi]
    for s in candidates:
        if (s * 127.0) / qmax == scale:
            return s
    return ideal


def merge_weights(engine: Any, replayed: Any, path: str = "plan", scales: bool = False) -> Any:
    """The engine's plan with the weight references of the replayed plan (``const`` of a value, ``t`` of an
    attribute); everything else must be equal, except the fields the build adds after the passes (kept from
    the engine). ``scales``: activation scales were calibrated anew, so the layers' scale attributes (``*scale``
    and the scale of an ``addq`` epilogue step) are taken from the replayed plan too. Raises
    ModelMismatchError naming the first place where the two graphs differ."""
    if scales and path.endswith(".attrs") and isinstance(engine, dict) and isinstance(replayed, dict):
        engine = dict(engine)
        for k in engine.keys() & replayed.keys():
            if k.endswith("scale") or (k == "epilogue" and _same_steps(engine[k], replayed[k])):
                engine[k] = replayed[k]
    if isinstance(engine, dict) and isinstance(replayed, dict):
        out = {}
        keep = _KEPT_META if path.endswith(".meta") else _KEPT_ATTRS if path.endswith(".attrs") else ()
        for k in keep:
            if k in engine:
                out[k] = engine[k]
        mine = {k for k in engine if k not in keep}
        theirs = {k for k in replayed if k not in keep}
        if mine != theirs:
            raise _differ(path, f"fields {sorted(mine ^ theirs)} are in one graph only")
        for k in mine:
            if k in ("const", "t") and isinstance(engine[k], str) and isinstance(replayed[k], str):
                out[k] = replayed[k]
            else:
                out[k] = merge_weights(engine[k], replayed[k], f"{path}.{k}", scales)
        return out
    if isinstance(engine, list) and isinstance(replayed, list):
        if len(engine) != len(replayed):
            raise _differ(path, f"{len(engine)} entries in the engine, {len(replayed)} after the passes")
        return [merge_weights(a, b, _item(path, i, a), scales) for i, (a, b) in enumerate(zip(engine, replayed))]
    both_nan = isinstance(engine, float) and isinstance(replayed, float) and math.isnan(engine) and math.isnan(replayed)
    if (type(engine) is not type(replayed) or engine != replayed) and not both_nan:
        raise _differ(path, f"{_short(engine)} in the engine, {_short(replayed)} after the passes")
    return engine


def _same_steps(engine: Any, replayed: Any) -> bool:
    """Whether two epilogue attribute records are the same steps but for the scales of ``AddQuantized`` steps."""
    def steps(record):
        items = record.get("list", []) if isinstance(record, dict) else []
        return [("addq", step.input) if isinstance(step := _step(s), AddQuantized) else s for s in items]
    return steps(engine) == steps(replayed)


def _step(item: Any) -> Any:
    """The step record of one stored list item, None when it is not a well-formed step."""
    try:
        return parse_step(item.get("s")) if isinstance(item, dict) else None
    except FusedStepError:
        return None


def _item(path: str, i: int, v: Any) -> str:
    """The path of list item ``i``, naming the layer when it is a node (``plan.nodes[3] (layer 'conv1', Conv)``)."""
    if isinstance(v, dict) and "op" in v and isinstance(v.get("name"), str):
        return f"{path}[{i}] (layer {v['name']!r}, {v['op']})"
    return f"{path}[{i}]"


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _differ(path: str, what: str) -> ModelMismatchError:
    return ModelMismatchError(
        f"the new weights do not give this engine's graph: at {path}, {what}. The build's passes made other "
        f"decisions for these weights (a value-dependent fold or fusion, another precision), so the engine "
        f"cannot take them without a rebuild; build a new engine from this model")


def weights_from_onnx(header: dict, plan: dict, report: Any, model: Any, registry: Registry,
                      where: str) -> tuple[dict, dict[str, torch.Tensor], Graph | None]:
    """(plan, weights, source graph) of an engine being loaded with ``weights_from=model``: the model is
    checked against the engine's record of its own (engine/source.py), then its initializers replayed through
    the passes. The source graph is kept (a copy, before the passes) only for a refittable engine."""
    from ..engine.source import check_matches
    from ..errors import EngineFormatError
    from ..frontend.onnx import parse
    from ..quant.calibrate import copy_graph
    if "source" not in header:
        raise EngineFormatError(f"{where} has no record of the model it was built from (it was written by an "
                                f"older Kiln), so it cannot take weights from an ONNX file: rebuild it")
    what = f"ONNX model {str(model)!r}" if isinstance(model, (str, Path)) else "the ONNX model given"
    graph = parse(model)
    check_matches(graph, header["source"], what)
    from .builder import add_debug_outputs
    debug = add_debug_outputs(graph, header.get("debug_tensors", ()))
    keep = copy_graph(graph) if header["config"].get("refittable") else None
    plan, weights = replay_weights(graph, header["config"], report, plan, registry, debug_tensors=debug)
    return plan, weights, keep
