"""Shape arithmetic on symbolic dims made constant, so a dynamic-batch build keeps the layers of a static one.

With a static batch, exporters' shape chains (Shape -> Gather -> Unsqueeze -> Concat -> Reshape, Range over
the batch, Expand to [batch, seq]) fold into constants. With a symbolic batch they would stay layers and run
on every call. These rules remove the need for them:

    Reshape(x, t)  t dynamic in one element only          ->  Reshape(x, t with -1 there)       (a constant)
    Reshape(Reshape(x, a), b)  b constant, no 0           ->  Reshape(x, b)     (also Flatten/Squeeze/Unsqueeze)
    Gather(d, idx, axis=0)  idx = 0, 1, ..., len(d) - 1    ->  Reshape(d, idx.shape + d.shape[1:])
    op(.., Expand(y, s), ..)  op broadcasts to the same shape without it       ->  op(.., y, ..)
    op(.., Gather(T, Expand(i, s)), ..)  the same, through a row lookup        ->  op(.., Gather(T, i), ..)

Dims are compared symbolically: two shapes are the same when they agree in the propagation at the probe
values and in the reference propagation at other probe values (see propagate.py). Index values (the iota
rule) are checked at both probes as well.
"""
from __future__ import annotations

import torch

from ..ir.graph import Graph, Node, Value
from .context import PassContext
from .propagate import Facts
from .rewrite import new_constant

def _shapes(facts: Facts, v: Value) -> list[tuple] | None:
    """v's shape at the probes and, when there is one, in the reference run; None if any is unknown."""
    runs = [facts] + facts.reference_runs()
    out = [r.shape(v) for r in runs]
    return None if any(s is None or not all(isinstance(d, int) for d in s) for s in out) else [tuple(s) for s in out]


def _values(facts: Facts, v: Value) -> list[torch.Tensor] | None:
    """v's data at the probes and in the reference run (computed even when it depends on symbols)."""
    runs = [facts] + facts.reference_runs()
    out = [v.const if v.const is not None else r.values.get(v.id) for r in runs]
    return None if any(t is None for t in out) else out


def _dynamic_elements(facts: Facts, v: Value) -> torch.Tensor | None:
    """Bool mask of the elements of a small int value that depend on symbols (None: v is not dynamic)."""
    if v.const is not None or v.id not in facts.dynamic:
        return None
    vals = facts.values.get(v.id)
    if vals is None:
        return None
    m = facts.masks.get(v.id)
    return m if m is not None else torch.ones(vals.shape, dtype=torch.bool)


def constant_reshape_target(graph: Graph, node: Node, facts: Facts, ctx: PassContext) -> bool:
    """Reshape(x, t), t dynamic in one element -> Reshape(x, t with -1 there): -1 takes the one size that makes
    the element count match, which is that element's value for every size the symbol takes."""
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return False
    t = node.inputs[1]
    mask = _dynamic_elements(facts, t)
    vals = _values(facts, t)
    if mask is None or vals is None or mask.dim() != 1 or vals[0].dim() != 1:
        return False
    if int(mask.sum()) != 1:
        ctx.reject("constant_reshape_target", [node], f"{int(mask.sum())} elements of the target shape depend on "
                   "symbolic dims; -1 can stand for one only")
        return False
    static = vals[0][~mask]
    if bool((static <= 0).any()) or any(int(v[mask].item()) <= 0 for v in vals):
        ctx.reject("constant_reshape_target", [node], "the target shape has 0 or -1 entries")
        return False
    target = vals[0].clone()
    target[mask] = -1
    node.set_input(1, new_constant(graph, f"{node.label}.shape", target.to(torch.int64)))
    ctx.count("constant_reshape_target")
    return True


def collapse_reshapes(graph: Graph, node: Node, facts: Facts, ctx: PassContext) -> bool:
    """Reshape(Reshape(x, a), b) -> Reshape(x, b): a reshape only reads the element order, which the inner
    reshape keeps. b must be a constant without 0 (0 would copy a dim of the inner result)."""
    if len(node.inputs) < 2 or node.inputs[0] is None:
        return False
    inner = node.inputs[0].producer
    b = node.inputs[1].const if node.inputs[1] is not None else None
    if inner is None or inner.graph is not graph or not ctx.registry.traits(inner.domain, inner.op_type).reshape \
            or b is None or bool((b == 0).any()) or inner.inputs[0] is None:
        return False
    node.set_input(0, inner.inputs[0])
    node.meta["covers"] = list(inner.meta.get("covers", [inner.label])) + list(node.meta.get("covers", [node.label]))
    ctx.count("collapse_reshapes")
    return True


def _iota(vals: list[torch.Tensor], length: int) -> bool:
    return all(v.numel() == length and torch.equal(v.reshape(-1).to(torch.int64), torch.arange(length))
               for v in vals)


def gather_iota_to_reshape(graph: Graph, node: Node, facts: Facts, ctx: PassContext) -> bool:
    """Gather(d, idx, axis=0) with idx holding 0..len(d)-1 in order (flat-index arithmetic such as
    b * seq + k over Range(batch)) reads every row once in order: a Reshape of d."""
    if node.attrs.get("axis", 0) != 0 or len(node.inputs) != 2 or node.inputs[1] is None:
        return False
    data, idx = node.inputs
    d_shapes, out_shapes, vals = _shapes(facts, data), _shapes(facts, node.outputs[0]), _values(facts, idx)
    if d_shapes is None or out_shapes is None or vals is None or not d_shapes[0]:
        return False
    if len(vals) != len(d_shapes) or not all(_iota([v], s[0]) for v, s in zip(vals, d_shapes)):
        return False
    target = _symbolic_target(out_shapes)
    if target is None:
        ctx.reject("gather_iota_to_reshape", [node], "the result has more than one symbolic dim")
        return False
    node.op_type, node.attrs = "Reshape", {}
    node.set_input(1, new_constant(graph, f"{node.label}.shape", torch.tensor(target, dtype=torch.int64)))
    ctx.count("gather_iota_to_reshape")
    return True


def _symbolic_target(shapes: list[tuple]) -> list[int] | None:
    """A Reshape target for a shape seen at several probe runs: -1 for the one dim that varies."""
    varying = [i for i in range(len(shapes[0])) if len({s[i] for s in shapes}) > 1]
    if len(varying) > 1 or any(d == 0 for d in shapes[0]):
        return None
    return [-1 if i in varying else d for i, d in enumerate(shapes[0])]


def _broadcast_keeps_shape(facts: Facts, consumer: Node, slot: int, replacement_shapes: list[tuple]) -> bool:
    """Whether ``consumer``'s output keeps its shape (in every probe run) with input ``slot`` of those shapes."""
    out = _shapes(facts, consumer.outputs[0])
    others = [_shapes(facts, v) for i, v in enumerate(consumer.inputs) if i != slot and v is not None]
    if out is None or any(o is None for o in others) or len(replacement_shapes) != len(out):
        return False
    for run, want in enumerate(out):
        try:
            got = torch.broadcast_shapes(replacement_shapes[run], *(o[run] for o in others))
        except RuntimeError:
            return False
        if tuple(got) != want:
            return False
    return True


def _broadcast_only_consumers(v: Value, graph: Graph, registry) -> bool:
    """Every reader of ``v`` is an op with the ``broadcasting`` trait (numpy rules), and ``v`` is no graph output."""
    return bool(v.uses) and all(registry.traits(n.domain, n.op_type).broadcasting and len(n.outputs) == 1
                                for n, _ in v.uses) and not any(o is v for o in graph.outputs)


def drop_broadcast_expands(graph: Graph, node: Node, facts: Facts, ctx: PassContext) -> bool:
    """op(.., Expand(y, s), ..) -> op(.., y, ..) where op's broadcast already gives its output shape."""
    y = node.inputs[0]
    y_shapes = _shapes(facts, y) if y is not None else None
    if y_shapes is None:
        return False
    changed = False
    for consumer, slot in list(node.outputs[0].uses):
        if consumer.domain == "" and ctx.registry.traits("", consumer.op_type).broadcasting \
                and _broadcast_keeps_shape(facts, consumer, slot, y_shapes):
            consumer.set_input(slot, y)
            ctx.count("drop_broadcast_expands")
            changed = True
    return changed


def gather_before_expand(graph: Graph, node: Node, facts: Facts, ctx: PassContext) -> bool:
    """op(.., Gather(T, Expand(i, s)), ..) -> op(.., Gather(T, i), ..): looking rows up commutes with
    broadcasting the indices, and op broadcasts the smaller lookup to the same output shape."""
    if node.attrs.get("axis", 0) != 0 or len(node.inputs) != 2 or node.inputs[1] is None:
        return False
    exp = node.inputs[1].producer
    if exp is None or exp.graph is not graph or exp.domain != "" or exp.op_type != "Expand" \
            or not _broadcast_only_consumers(node.outputs[0], graph, ctx.registry):
        return False
    table, i = node.inputs[0], exp.inputs[0]
    t_shapes, i_shapes = _shapes(facts, table), _shapes(facts, i) if i is not None else None
    if t_shapes is None or i_shapes is None:
        return False
    small = [tuple(s) + tuple(t[1:]) for s, t in zip(i_shapes, t_shapes)]
    if not all(_broadcast_keeps_shape(facts, c, slot, small) for c, slot in node.outputs[0].uses):
        return False
    out = Value(f"{node.outputs[0].name}.unexpanded")
    lookup = Node("Gather", [table, i], [out], {"axis": 0}, name=f"{node.label}.unexpanded")
    lookup.meta["covers"] = [exp.label, node.label]
    graph.insert_before(node, lookup)
    for consumer, slot in list(node.outputs[0].uses):
        consumer.set_input(slot, out)
    ctx.count("gather_before_expand")
    return True


RULES = {"Reshape": (constant_reshape_target, collapse_reshapes),
         "Gather": (gather_iota_to_reshape, gather_before_expand),
         "Expand": (drop_broadcast_expands,)}


def simplify_symbolic_shapes(graph: Graph, ctx: PassContext) -> bool:
    facts = ctx.facts
    changed = False
    for node in list(graph.nodes):
        if node.graph is not graph or node.domain != "" or not node.outputs or node.outputs[0] is None:
            continue
        for rule in RULES.get(node.op_type, ()):
            if rule(graph, node, facts, ctx):
                changed = True
                break  # the node changed: the facts about it are stale until the next round
    return changed
