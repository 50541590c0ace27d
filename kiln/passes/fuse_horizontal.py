"""Horizontal fusion: sibling layers reading the same input become one wider layer and a Split.

    Linear(x, W1, b1), Linear(x, W2, b2)  -> Split(Linear(x, [W1; W2], [b1; b2]))   (Q, K, V projections)
    Conv(x, W1, b1),   Conv(x, W2, b2)    -> Split(Conv(x, [W1; W2], [b1; b2]), axis=1)  (Inception branches)
"""
from __future__ import annotations

import torch

from ..ir.graph import Graph, Node
from .context import PassContext
from .rewrite import const, merge_covers, new_constant


def _key(n: Node):
    """Siblings merge when they share input, op and every attribute; weights and biases must be constants."""
    if n.domain != "kiln" or n.op_type not in ("Linear", "Conv") or len(n.inputs) > 3:
        return None
    if const(n.inputs[1]) is None or (len(n.inputs) > 2 and n.inputs[2] is not None and const(n.inputs[2]) is None):
        return None
    if n.op_type == "Conv" and n.attrs.get("group", 1) != 1:
        return None
    w = const(n.inputs[1])
    attrs = tuple(sorted((k, str(v)) for k, v in n.attrs.items()))
    return (n.inputs[0].id, n.op_type, attrs, str(w.dtype), tuple(w.shape[1:]))


def fuse_horizontal(graph: Graph, ctx: PassContext) -> bool:
    groups: dict = {}
    for n in graph.nodes:
        k = _key(n)
        if k is not None:
            groups.setdefault(k, []).append(n)
    changed = False
    opset = graph.opsets.get("", 21)
    for key, nodes in groups.items():
        if len(nodes) < 2:
            continue
        first = nodes[0]
        ws = [const(n.inputs[1]) for n in nodes]
        bs = [const(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else
              torch.zeros(w.shape[0], dtype=w.dtype) for n, w in zip(nodes, ws)]
        sizes = [w.shape[0] for w in ws]
        x = first.inputs[0]
        merged = Node(first.op_type, [x, new_constant(graph, f"{first.label}.hweight", torch.cat(ws)),
                                      new_constant(graph, f"{first.label}.hbias", torch.cat(bs))],
                      [], dict(first.attrs), name=f"{first.label}.merged", domain="kiln")
        from ..ir.graph import Value
        wide = Value(f"{first.label}.merged_out")
        wide.producer, wide.index = merged, 0
        merged.outputs = [wide]
        merge_covers(merged, nodes)
        axis = -1 if first.op_type == "Linear" else 1
        outs = [n.outputs[0] for n in nodes]
        for n in nodes:
            n.detach()
            n.outputs = []
        split_in = [wide]
        attrs = {"axis": axis}
        if opset >= 13:
            split_in.append(new_constant(graph, f"{first.label}.split", torch.tensor(sizes, dtype=torch.int64)))
        else:
            attrs["split"] = sizes
        split = Node("Split", split_in, outs, attrs, name=f"{first.label}.split")
        split.meta["covers"] = []
        at = graph.nodes.index(first)
        for n in nodes:
            graph.nodes.remove(n)
            n.graph = None
        graph.nodes[at:at] = [merged, split]
        merged.graph = split.graph = graph
        ctx.count(f"fuse_horizontal:{first.op_type}", len(nodes))
        changed = True
    return changed
