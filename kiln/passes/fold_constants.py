"""Constant folding: a node whose inputs are all known is run once at build time (with Kiln's own
kernels) and replaced by its result. Shape/Size of statically shaped values are known, so exporters'
Shape -> Gather -> Unsqueeze -> Concat chains fold away when the shapes they read are static."""
from __future__ import annotations

import torch

from ..ir.graph import Graph
from ..ir.types import TensorType
from .context import PassContext
from .rewrite import has_subgraphs, new_constant, replace_uses

# A folded constant is stored in the engine: results over MAX_ELEMENTS, or over GROWTH_CHECK_ELEMENTS and
# MAX_GROWTH times larger than their inputs (an Expand of a scalar), stay layers.
MAX_GROWTH = 16
GROWTH_CHECK_ELEMENTS = 1 << 22
MAX_ELEMENTS = 1 << 24


def fold_constants(graph: Graph, ctx: PassContext) -> bool:
    facts = ctx.facts
    changed = False
    flat = not has_subgraphs(graph)
    for node in list(graph.nodes):
        if any(True for _ in node.subgraphs()) or not node.outputs:
            continue
        if ctx.registry.traits(node.domain, node.op_type).never_fold:
            continue  # random ops; an op without a Kiln kernel (RandomNormal, ...) cannot fold anyway
        known = [None if v is None else (v.const if v.const is not None else facts.known(v)) for v in node.inputs]
        if any(v is not None and k is None for v, k in zip(node.inputs, known)) \
                and node.op_type not in ("Shape", "Size") and not _outputs_static(node, facts):
            continue
        results = _results(node, known, facts, ctx)
        if results is None:
            continue
        in_elems = sum(k.numel() for k in known if k is not None)
        out_elems = sum(r.numel() for r in results)
        if out_elems > MAX_ELEMENTS or (out_elems > GROWTH_CHECK_ELEMENTS and out_elems > MAX_GROWTH * in_elems):
            ctx.reject("fold_constants", [node], f"result has {out_elems} elements, from {in_elems} input elements:"
                       " kept as a layer so the engine does not store the expanded tensor")
            continue
        for v, r in zip(node.outputs, results):
            if v is None:
                continue
            c = new_constant(graph, v.name, r.contiguous())
            c.type = TensorType(v.type.dtype if isinstance(v.type, TensorType) and v.type.dtype is not None
                                else c.type.dtype, tuple(r.shape))
            replace_uses(graph, v, c, flat)
        graph.remove(node)
        ctx.count("fold_constants")
        changed = True
    return changed


def _outputs_static(node, facts) -> bool:
    """All outputs known although an input is not: propagation found each output element independent of the
    symbolic dims (Gather(Shape(x), 1) where only dim 0 of x is symbolic)."""
    return all(o is not None and facts.known(o) is not None for o in node.outputs)


def _results(node, known, facts, ctx):
    # Propagation already ran the node for real when its inputs were known: reuse its results.
    vals = [facts.known(o) for o in node.outputs if o is not None]
    if vals and all(v is not None and v.device.type == "cpu" for v in vals) and len(vals) == len(node.outputs):
        return vals
    if node.op_type in ("Shape", "Size"):
        return None
    opdef = ctx.registry.get(node.domain, node.op_type)
    if opdef is None:
        return None
    from ..ops import KernelContext
    kctx = KernelContext(opset=ctx.graph.opsets.get("", 21), device=torch.device("cpu"),
                         num_outputs=len(node.outputs),
                         output_types=[o.type if o is not None else None for o in node.outputs], node_name=node.label)
    try:
        with torch.no_grad():
            out = opdef.kernel(kctx, [None if k is None else k.cpu() for k in known], node.attrs)
    except Exception as e:  # noqa: BLE001 - a node that cannot fold stays a layer; the report says why
        ctx.reject("fold_constants", [node], f"kernel failed at build time: {type(e).__name__}: {e}")
        return None
    if isinstance(out, torch.Tensor) or not isinstance(out, tuple):
        out = (out,)
    if not all(isinstance(r, torch.Tensor) for r in out[: len(node.outputs)]):
        return None
    return list(out[: len(node.outputs)])
