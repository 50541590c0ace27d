"""Dynamic dims read from the model's inputs, not from intermediate tensors.

    Gather(Shape(x), i)          ->  Gather(Shape(inp), j)      when dim i of x is the symbolic dim j of input inp
    Slice(Shape(x), [i], [i+1])  ->  Shape(inp, start=j, end=j+1)

Exporters read a tensor's batch or sequence length from whatever tensor is at hand (the attention
output, a LayerNorm result). Those reads tie the tensor to a Shape node, which keeps it from being fused
(a fused layer's intermediate cannot be read), and every layer repeats the same Shape -> Gather chain.
Reading the dim from the input instead frees the tensor; CSE then merges the repeated chains.

The dims are matched by probing (each symbol has a distinct probe value, see propagate.py) and checked a
second time at the profile's min shapes, so a dim that only equals the symbol at one size (a clamp, a
max(.., 1)) is left alone.
"""
from __future__ import annotations

import torch

from ..ir.dtype import DType
from ..ir.graph import Graph, Node, Value
from ..ir.types import TensorType
from .context import PassContext
from .propagate import propagate
from .rewrite import new_constant


def _symbol_sources(graph: Graph, ctx: PassContext) -> dict[str, tuple[Value, int]]:
    out: dict[str, tuple[Value, int]] = {}
    for v in graph.inputs:
        for j, d in enumerate((ctx.input_shapes or {}).get(v.name, ())):
            if isinstance(d, str) and d not in out:
                out[d] = (v, j)
    return out


def _min_shapes(graph: Graph, ctx: PassContext) -> dict[str, tuple] | None:
    if not ctx.config.profiles:
        return None
    p = ctx.config.profiles[0]
    shapes = {}
    for v in graph.inputs:
        if v.name in p.min:
            shapes[v.name] = tuple(p.min[v.name])
        else:
            s = (ctx.input_shapes or {}).get(v.name)
            if s is None or not all(isinstance(d, int) for d in s):
                return None
            shapes[v.name] = tuple(s)
    return shapes


def _element_read(node: Node, length: int) -> int | None:
    """Which element of a shape vector of ``length`` the node reads alone: Gather(s, i) with a one-element
    constant index (axis 0), or Slice(s, [i], [i+1]) with constant operands; else None."""
    if node.op_type == "Gather" and node.attrs.get("axis", 0) == 0 and len(node.inputs) == 2:
        idx = node.inputs[1].const if node.inputs[1] is not None else None
        if idx is None or idx.numel() != 1:
            return None
        i = int(idx.reshape(()).item())
        i = i + length if i < 0 else i
        return i if 0 <= i < length else None
    if node.op_type == "Slice" and 3 <= len(node.inputs) <= 5:
        c = [v.const if v is not None else None for v in node.inputs[1:]]
        if any(v is not None and t is None for v, t in zip(node.inputs[1:], c)):
            return None
        if any(t is not None and t.numel() != 1 for t in c):
            return None
        st, en = int(c[0].item()), int(c[1].item())
        axes = int(c[2].item()) if len(c) > 2 and c[2] is not None else 0
        step = int(c[3].item()) if len(c) > 3 and c[3] is not None else 1
        if axes not in (0, -1) or step != 1:
            return None
        st = st + length if st < 0 else st
        en = min(en + length if en < 0 else en, length)
        return st if 0 <= st < length and en == st + 1 else None
    return None


def read_dims_from_inputs(graph: Graph, ctx: PassContext) -> bool:
    sources = _symbol_sources(graph, ctx)
    if not sources or not any(n.op_type == "Shape" and n.domain == "" for n in graph.nodes):
        return False
    facts = ctx.facts
    if not facts.symbols:
        return False
    candidates = []
    for g in graph.nodes:
        if g.domain != "" or not g.inputs or g.inputs[0] is None:
            continue
        shp = g.inputs[0].producer
        if shp is None or shp.domain != "" or shp.op_type != "Shape" or shp.inputs[0] in graph.inputs:
            continue
        x_shape = facts.shape(shp.inputs[0])
        if x_shape is None:
            continue
        rank = len(x_shape)
        start = shp.attrs.get("start", 0)
        start = max(0, min(rank, start + rank if start < 0 else start))
        end = shp.attrs.get("end", rank)
        end = max(0, min(rank, end + rank if end < 0 else end))
        i = _element_read(g, end - start)
        if i is None or (g.op_type == "Slice" and graph.opsets.get("", 21) < 15):  # Shape(start, end): opset 15
            continue
        dim = start + i
        if not 0 <= dim < rank or not facts.is_probe(x_shape[dim]):
            continue
        sym = facts.symbols[x_shape[dim]]
        if sym not in sources:
            continue
        candidates.append((g, shp.inputs[0], dim, sym))
    if not candidates:
        return False
    mins = _min_shapes(graph, ctx)
    if mins is None:
        return False
    facts_min = propagate(graph, mins, ctx.registry, cache=ctx.caches.setdefault("shape_reads_min", {}))
    changed = False
    for g, x, dim, sym in candidates:
        inp, j = sources[sym]
        s_min = facts_min.shape(x)
        if s_min is None or len(s_min) <= dim or s_min[dim] != mins[inp.name][j]:
            ctx.reject("read_dims_from_inputs", [g], f"dim {dim} equals {sym!r} at the probe but not at the "
                       "profile's min shape")
            continue
        if g.op_type == "Slice":  # the one-element slice becomes the input's Shape(start=j, end=j+1)
            out = g.outputs[0]
            new = Node("Shape", [inp], [], {"start": j, "end": j + 1}, name=f"{g.label}.shape")
            new.meta["covers"] = [g.label]
            graph.insert_before(g, new)
            g.detach()
            graph.nodes.remove(g)
            g.graph = None
            out.producer, out.index = new, 0
            new.outputs = [out]
            ctx.count("read_dims_from_inputs")
            changed = True
            continue
        shape_node = Node("Shape", [inp], [Value(f"{inp.name}.shape")], {}, name=f"{inp.name}.shape")
        shape_node.outputs[0].type = TensorType(DType.INT64, (len(ctx.input_shapes[inp.name]),))
        shape_node.meta["covers"] = []
        graph.insert_before(g, shape_node)
        old_idx = g.inputs[1].const
        j_const = new_constant(graph, f"{g.label}.index", torch.full(old_idx.shape, j, dtype=old_idx.dtype))
        g.set_input(0, shape_node.outputs[0])
        g.set_input(1, j_const)
        ctx.count("read_dims_from_inputs")
        changed = True
    return changed
