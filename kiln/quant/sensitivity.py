"""Holding a reduced-precision build within its accuracy target.

Measure the quantized graph against float32 on the validation data (or the calibration data). When
outside the target: rank the quantized layers by sensitivity (the error when that layer alone is
quantized), then put layers back to float, most sensitive first, until the target is met. Every
measurement is recorded, so the report says which layers were kept and what each cost.
"""
from __future__ import annotations

from ..ir.graph import Graph
from .accuracy import AccuracyTarget, compare
from .calibrate import copy_graph, run_graph
from .rewrite import ActParams, apply_quantization


def _rounded(m: dict) -> dict:
    return {k: round(v, 6) for k, v in m.items()}


def fit_to_target(graph: Graph, ctx, chosen: dict[int, str], params: dict[str, ActParams],
                  batches: list[dict], hints: dict | None = None) -> tuple[dict[int, str], dict]:
    cfg = ctx.config
    target = AccuracyTarget.parse(cfg.accuracy_target)
    info: dict = {"target": {k: v for k, v in vars(target).items() if v is not None}}
    if not batches:
        ctx.notes.append("accuracy target not checked: no validation or calibration data (e.g. scales came "
                         "from the calibration cache); give validation_data")
        info["checked"] = False
        return chosen, info
    labels = {n.meta["qid"]: n.label for n in graph.nodes if "qid" in n.meta}
    ref = run_graph(graph, batches, cfg.device, ctx.registry)

    def measure(subset) -> dict:
        g = copy_graph(graph)
        apply_quantization(g, {q: chosen[q] for q in subset}, params, hints)
        _lower(g, ctx)
        return compare(ref, run_graph(g, batches, cfg.device, ctx.registry))

    current = set(chosen)
    m = measure(current)
    info.update(checked=True, batches=len(batches), all_quantized=_rounded(m), kept=[])
    if not target.met(m):
        alone = {q: measure({q}) for q in chosen}
        order = sorted(chosen, key=lambda q: target.badness(alone[q]), reverse=True)
        info["sensitivity"] = [{"layer": labels[q], "alone": _rounded(alone[q])} for q in order]
        for q in order:
            current.discard(q)
            m = measure(current)
            info["kept"].append({"layer": labels[q], "precision": "float", "alone": _rounded(alone[q]),
                                 "after_keeping": _rounded(m)})
            if target.met(m):
                break
    info["measured"] = _rounded(m)
    info["met"] = target.met(m)
    kept = [k["layer"] for k in info["kept"]]
    ctx.notes.append(f"accuracy: cosine {m['cosine']:.6f}, max relative error {m['max_rel_error']:.6f} vs float32 "
                     f"on {len(batches)} batches; target {info['target']} "
                     f"{'met' if info['met'] else 'NOT met even with every layer in float'}"
                     + (f"; kept in float: {', '.join(kept)}" if kept else ""))
    return {q: chosen[q] for q in sorted(current)}, info


def _lower(g: Graph, ctx) -> None:
    """Apply the build's fp16/bf16 lowering to the copy too, so the measurement is of what will run."""
    from ..passes.context import PassContext
    from ..passes.precision import lower_precision, target_dtype
    if target_dtype(ctx) is None:
        return
    lower_precision(g, PassContext(g, ctx.config, ctx.registry, ctx.input_shapes))
