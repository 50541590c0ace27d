"""No-op removal: nodes whose output equals their first input (Identity, inference Dropout, Cast to the
same type, Reshape/Expand/Flatten to the same static shape, identity Transpose, x+0, x*1, x/1, x-0,
a one-input Concat), each rule with its condition next to it."""
from __future__ import annotations

from ..ir.graph import Graph, Node
from .context import PassContext
from .rewrite import has_subgraphs, replace_uses, scalar


def _same_shape(ctx: PassContext, node: Node) -> bool:
    a, b = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    return a is not None and b is not None and all(isinstance(d, int) for d in a) and tuple(a) == tuple(b)


def _same_type(ctx: PassContext, node: Node) -> bool:
    return ctx.dtype(node.inputs[0]) is not None and ctx.dtype(node.inputs[0]) == ctx.dtype(node.outputs[0])


def _neutral(ctx: PassContext, node: Node, value: float, commutative: bool) -> int | None:
    """Index of the input that passes through when the other is the neutral scalar ``value``."""
    x, c = node.inputs[0], node.inputs[1]
    if scalar(c) == value and _same_shape(ctx, node) and _same_type(ctx, node):
        return 0
    if commutative and scalar(x) == value and ctx.shape(c) == ctx.shape(node.outputs[0]) \
            and ctx.dtype(c) == ctx.dtype(node.outputs[0]) and ctx.shape(c) is not None:
        return 1
    return None


def _passthrough(ctx: PassContext, node: Node) -> int | None:
    op = node.op_type
    if op == "Identity" or (op == "Concat" and len(node.inputs) == 1):
        return 0
    if op == "Dropout":  # inference: output = input; the mask output must be unused
        training = node.inputs[2] if len(node.inputs) > 2 else None
        if training is not None and (training.const is None or bool(training.const.item())):
            return None
        if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses:
            return None
        return 0
    if op in ("Cast", "CastLike"):
        return 0 if _same_type(ctx, node) else None
    if op in ("Reshape", "Expand", "Flatten", "Squeeze", "Unsqueeze"):
        return 0 if _same_shape(ctx, node) else None
    if op == "Transpose":
        perm = node.attrs.get("perm")
        return 0 if perm is not None and list(perm) == sorted(perm) else None
    if op in ("Add", "Sub") and len(node.inputs) == 2:
        return _neutral(ctx, node, 0.0, op == "Add")
    if op in ("Mul", "Div") and len(node.inputs) == 2:
        return _neutral(ctx, node, 1.0, op == "Mul")
    return None


def remove_noops(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    flat = not has_subgraphs(graph)
    for node in list(graph.nodes):
        keep = _passthrough(ctx, node)
        if keep is None or node.inputs[keep] is None or node.outputs[0] is None:
            continue
        src, out = node.inputs[keep], node.outputs[0]
        if out in graph.outputs and (src in graph.inputs or src in graph.outputs):
            continue  # keep a copy so that an engine output is not an alias of an input or another output
        replace_uses(graph, out, src, flat)
        if all(o is None or not o.uses for o in node.outputs) and out not in graph.outputs:
            graph.remove(node)
            ctx.count(f"remove_noops:{node.op_type}")
            changed = True
    return changed
