"""No-op removal: nodes whose output equals their first input (Identity, inference Dropout, Cast to the
same type, Reshape/Expand/Flatten to the same static shape, identity Transpose, x+0, x*1, x/1, x-0,
a one-input Concat), each rule with its condition next to it."""
from __future__ import annotations

from ..ir.graph import Graph, Node
from .context import PassContext
from .rewrite import has_subgraphs, replace_uses, scalar


def _same_shape(ctx: PassContext, node: Node) -> bool:
    """Input and output shapes equal, also symbolically: equal at the probe values and in the reference run
    at other probe values (Reshape(x, Shape(x')) where x' has x's symbolic shape)."""
    a, b = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    if a is None or b is None or not all(isinstance(d, int) for d in a) or tuple(a) != tuple(b):
        return False
    runs = ctx.facts.reference_runs()
    if not runs:  # no second run to compare: only shapes free of probe dims count as equal
        return not any(ctx.facts.is_probe(d) for d in a)
    for ref in runs:
        ra, rb = ref.shape(node.inputs[0]), ref.shape(node.outputs[0])
        if ra is None or rb is None or tuple(ra) != tuple(rb):
            return False
    return True


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
    if ctx.registry.traits("", op).reshape or op == "Expand":  # same elements; same shape: the input itself
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


def _transpose_of(v, graph: Graph):
    p = v.producer
    if p is None or p.graph is not graph or p.domain != "" or p.op_type != "Transpose" or "perm" not in p.attrs:
        return None
    return p


def merge_transposes(graph: Graph, ctx: PassContext) -> bool:
    """Layout shuffles exporters spell in several steps, made one Transpose:

    Transpose(Transpose(x, p), q)                                  -> Transpose(x, [p[q[i]]])
    Reshape(Transpose(Reshape(x, [n, s, d]), [0, 2, 1]), [..., d, s]) -> Transpose(x, [..., -1, -2])   (x [..., s, d])
    """
    changed = False
    for node in list(graph.nodes):
        if node.graph is not graph or node.domain != "":
            continue
        if node.op_type == "Transpose" and "perm" in node.attrs:
            inner = _transpose_of(node.inputs[0], graph)
            if inner is None or len(inner.outputs[0].uses) != 1 or inner.outputs[0] in graph.outputs:
                continue
            p, q = list(inner.attrs["perm"]), list(node.attrs["perm"])
            node.attrs = {"perm": [p[i] for i in q]}
            node.set_input(0, inner.inputs[0])
            graph.remove(inner)
            node.meta["covers"] = list(inner.meta.get("covers", [inner.label])) + \
                list(node.meta.get("covers", [node.label]))
            ctx.count("merge_transposes")
            changed = True
        elif node.op_type == "Reshape":
            t = _transpose_of(node.inputs[0], graph)
            if t is None or list(t.attrs["perm"]) != [0, 2, 1] or len(t.outputs[0].uses) != 1:
                continue
            r = t.inputs[0].producer
            if r is None or r.graph is not graph or r.domain != "" or r.op_type != "Reshape" \
                    or len(r.outputs[0].uses) != 1:
                continue
            x = r.inputs[0]
            xs, flat, out = ctx.shape(x), ctx.shape(r.outputs[0]), ctx.shape(node.outputs[0])
            if xs is None or flat is None or out is None or len(xs) < 3 or len(flat) != 3 \
                    or tuple(flat[1:]) != tuple(xs[-2:]) or tuple(out) != tuple(xs[:-2]) + (xs[-1], xs[-2]):
                continue
            rank = len(xs)
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
            new = Node("Transpose", [x], [], {"perm": perm}, name=f"{node.label}.transpose")
            out_v = node.outputs[0]
            graph.insert_before(node, new)
            node.detach()
            graph.nodes.remove(node)
            node.graph = None
            out_v.producer, out_v.index = new, 0
            new.outputs = [out_v]
            new.meta["covers"] = [r.label, t.label, node.label]
            graph.remove(t)
            graph.remove(r)
            ctx.count("merge_transposes")
            changed = True
    return changed
