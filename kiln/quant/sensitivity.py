"""Holding a reduced-precision build within its accuracy target.

Measure the quantized graph against float32 on the validation data (or the calibration data). When
outside the target:
1. rank the quantized layers by sensitivity, in one float run: each layer's quantized kernel is run on
   the layer's own float inputs and its output compared with the float output (the layer's local effect);
2. put layers back to float, most sensitive first, measuring the whole graph after each, until the target
   is met (every measurement is recorded: the report says which layers were kept and what each did).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from ..ir.graph import Graph
from ..ops import KernelContext
from .accuracy import compare, resolve_target
from .calibrate import copy_graph, run_graph
from .rewrite import QUANTIZED, ActParams, apply_quantization, layer_parts, others

log = logging.getLogger("kiln.quant")


def _rounded(m: dict) -> dict:
    return {k: round(v, 6) for k, v in m.items()}


def local_sensitivity(graph: Graph, ctx, chosen: dict[int, str], params: dict[str, ActParams],
                      batches: list[dict], hints: dict) -> dict[int, dict]:
    """qid -> {"cosine", "max_rel_error"} of each layer's quantized output vs its float output."""
    nodes = {n.meta["qid"]: n for n in graph.nodes if n.meta.get("qid") in chosen}
    parts = {q: layer_parts(n, chosen[q], params[n.inputs[0].name], hints.get(n.inputs[1].name))
             for q, n in nodes.items()}
    kernels = {q: ctx.registry.get("kiln", QUANTIZED[n.op_type]).kernel for q, n in nodes.items()}
    dev = torch.device(ctx.config.device)
    by_output = {n.outputs[0].id: q for q, n in nodes.items()}
    refs: dict[int, list] = {q: [] for q in nodes}
    gots: dict[int, list] = {q: [] for q in nodes}
    env_box: dict = {}

    def hook(vid, value):
        q = by_output.get(vid)
        if q is None:
            return
        n = nodes[q]
        env = env_box["env"]
        args = [None if v is None else (v.const.to(dev) if v.const is not None else env[v.id]) for v in n.inputs]
        wq, sw, attrs, extra = parts[q]
        ins = [args[0], wq.to(dev), sw.to(dev)] + others(args[2:], extra) + [t.to(dev) for t in extra]
        kctx = KernelContext(opset=17, device=dev)
        got = kernels[q](kctx, ins, attrs)
        refs[q].append([value.float().cpu()])
        gots[q].append([got.float().cpu()])

    run_graph(graph, batches, ctx.config.device, ctx.registry, hook, env_box)
    return {q: compare(refs[q], gots[q]) for q in nodes}


def fit_to_target(graph: Graph, ctx, chosen: dict[int, str], params: dict[str, ActParams],
                  batches: list[dict], hints: dict | None = None,
                  lower: Callable[[Graph], None] | None = None,
                  int8_shortcuts: bool = False) -> tuple[dict[int, str], dict]:
    """``lower``: the build's fp16/bf16 lowering, applied to each measured copy so the measurement is of what
    will run (the caller, a pass, passes it in); ``int8_shortcuts``: as the build will quantize (rewrite.py)."""
    cfg = ctx.config
    hints = hints or {}
    precision = "fp8" if "fp8" in chosen.values() else "int8"
    target = resolve_target(cfg.accuracy_target, precision)
    info: dict = {"target": {k: v for k, v in vars(target).items() if v is not None}}
    if not batches:
        # (random inputs would measure clipping that real data never sees: no generated sample for 8-bit)
        msg = (f"accuracy target not checked: no validation or calibration data (e.g. scales came from the "
               f"calibration cache), so this {precision} engine was not compared with float32; give "
               f"validation_data")
        log.warning(msg)
        ctx.notes.append(msg)
        info["checked"] = False
        return chosen, info
    labels = {n.meta["qid"]: n.label for n in graph.nodes if "qid" in n.meta}
    ref = run_graph(graph, batches, cfg.device, ctx.registry)

    def measure(subset) -> dict:
        g = copy_graph(graph)
        apply_quantization(g, {q: chosen[q] for q in subset}, params, hints, int8_shortcuts)
        if lower is not None:
            lower(g)
        return compare(ref, run_graph(g, batches, cfg.device, ctx.registry))

    current = set(chosen)
    m = measure(current)
    info.update(checked=True, batches=len(batches), all_quantized=_rounded(m), kept=[])
    if not target.met(m):
        local = local_sensitivity(graph, ctx, chosen, params, batches, hints)
        order = sorted(chosen, key=lambda q: target.badness(local[q]), reverse=True)
        info["sensitivity"] = [{"layer": labels[q], "local": _rounded(local[q])} for q in order]
        for q in order:
            current.discard(q)
            m = measure(current)
            info["kept"].append({"layer": labels[q], "precision": "float", "local": _rounded(local[q]),
                                 "after_keeping": _rounded(m)})
            if target.met(m):
                break
    info["measured"] = _rounded(m)
    info["met"] = target.met(m)
    kept = [k["layer"] for k in info["kept"]]
    ctx.notes.append(f"accuracy: cosine {m['cosine']:.6f}, max relative error {m['max_rel_error']:.6f}, top-1 "
                     f"agreement {m.get('top1', 1.0):.4f} vs float32 "
                     f"on {len(batches)} batches; target {info['target']} "
                     f"{'met' if info['met'] else 'NOT met even with every layer in float'}"
                     + (f"; kept in float: {', '.join(kept)}" if kept else ""))
    return {q: chosen[q] for q in sorted(current)}, info

