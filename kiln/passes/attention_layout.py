"""Where attention's Q, K and V come from and where its result goes, found by tracing element positions.

Exporters split heads in many ways: Transpose(Reshape(x, [b, s, H, D])) (BERT, transformers' ViT); a packed
projection Reshape(qkv, [b, s, 3, H, D]) + Transpose(2, 0, 3, 1, 4) + Gather/Squeeze/Split (timm, Swin);
nn.MultiheadAttention's [s, b, 3E] projection unflattened, unsqueezed, transposed, squeezed, reshaped to
[s, b*H, D], transposed and viewed as [b, H, s, D]. Rather than one pattern per exporter, ``trace_positions`` runs
a chain of data-movement ops on the positions 0..n-1 of the tensor it starts from: the result says, for every
element of Q (or K, V), which element of that tensor it is. Comparing it with the positions a plain head split of
[b, s, H*D] (or [s, b, H*D]) gives decides the layout exactly, whatever ops the exporter chose. Positions are
concrete: a dim a profile lets vary is traced at each of the build's probe sizes, and the layout must agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ir.graph import Node, Value
from ..ops import default_registry
from .context import PassContext
from .rewrite import only_use

# Ops that only move elements (their other inputs constant): running one on positions tells where each goes.
# The registry's views (Reshape, Transpose, Slice, Split, ...) and Gather, which copies but only selects.
MOVES = default_registry().ops_with("view") | {"Gather"}


def _run(ctx: PassContext, node: Node, pos: torch.Tensor, output: int) -> torch.Tensor | None:
    """``node``'s output ``output`` when its data input holds ``pos`` (its other inputs are constants)."""
    from ..ops import KernelContext
    opdef = ctx.registry.get(node.domain, node.op_type)
    kctx = KernelContext(opset=ctx.graph.opsets.get("", 21), device=torch.device("cpu"),
                         num_outputs=len(node.outputs), output_types=[o.type if o is not None else None
                                                                      for o in node.outputs], node_name=node.label)
    try:
        out = opdef.kernel(kctx, [pos] + [None if i is None else i.const for i in node.inputs[1:]], node.attrs)
    except Exception:  # noqa: BLE001 - a chain the kernel refuses is simply not a head split
        return None
    out = out[output] if isinstance(out, (tuple, list)) else out
    return out if isinstance(out, torch.Tensor) else None


def _moves(node: Node | None) -> bool:
    return node is not None and node.domain == "" and node.op_type in MOVES and node.graph is not None \
        and all(i is None or i.const is not None for i in node.inputs[1:])


def trace_root(v: Value, max_nodes: int = 16) -> tuple[Value, list[tuple[Node, int]]]:
    """Follow ``v`` back through data-movement ops to the first value no such op made (the root): returns it
    and the (node, output index) steps, last step first."""
    chain: list[tuple[Node, int]] = []
    while len(chain) < max_nodes and _moves(v.producer):
        chain.append((v.producer, v.index))
        v = v.producer.inputs[0]
    return v, chain


def trace_positions(v: Value, ctx: PassContext):
    """(root, positions per run, nodes) for ``v`` (see trace_root and PassContext.shape_runs): positions shaped
    like ``v``, holding each element's flat index in the root."""
    v, chain = trace_root(v)
    runs = ctx.shape_runs(v)
    if runs is None:
        return None
    found = []
    for shape in runs:
        pos = torch.arange(math.prod(shape)).reshape(shape)
        for node, output in reversed(chain):
            pos = _run(ctx, node, pos, output)
            if pos is None:
                return None
        found.append(pos)
    return v, found, [n for n, _ in chain]


@dataclass(frozen=True)
class HeadSplit:
    """Q, K or V as the heads of columns ``offset``..``offset + heads * head_size`` of ``root`` ([b, s, C], or
    [s, b, C] when ``seq_first``; C static)."""

    root: Value
    seq_first: bool
    offset: int
    heads: int
    head_size: int
    channels: int
    nodes: list


def _layout(pos: torch.Tensor, rshape: tuple, transposed: bool) -> tuple | None:
    """(seq_first, offset, heads, head_size) when ``pos`` is a head split of a root shaped ``rshape``."""
    if len(rshape) != 3 or pos.dim() not in (3, 4):
        return None
    if transposed:
        pos = pos.transpose(-1, -2)
    s, d = pos.shape[-2:]
    grid = torch.arange(math.prod(rshape)).reshape(rshape)
    for seq_first in (False, True):
        rb, rs = (rshape[1], rshape[0]) if seq_first else (rshape[0], rshape[1])
        if rs != s or (pos.dim() == 4 and pos.shape[0] != rb) or (pos.dim() == 3 and pos.shape[0] % rb):
            continue
        heads = pos.shape[1] if pos.dim() == 4 else pos.shape[0] // rb
        offset, width = int(pos.reshape(-1)[0]) % rshape[2], heads * d
        if offset + width > rshape[2]:
            continue
        rows = grid.transpose(0, 1) if seq_first else grid  # [b, s, C]
        want = rows[:, :, offset:offset + width].reshape(rb, s, heads, d).transpose(1, 2).reshape(pos.shape)
        if torch.equal(pos, want):
            return seq_first, offset, heads, int(d)
    return None


def head_split(v: Value, ctx: PassContext, transposed: bool = False) -> HeadSplit | None:
    """``v`` ([b, H, s, D], or [b*H, s, D]; K^T [.., D, s] when ``transposed``) as a HeadSplit, else None."""
    found = trace_positions(v, ctx)
    if found is None:
        return None
    root, positions, nodes = found
    rshapes = ctx.shape_runs(root)
    layouts = {_layout(pos, rshape, transposed) for pos, rshape in zip(positions, rshapes)}
    channels = {r[-1] for r in rshapes}
    if len(layouts) != 1 or None in layouts or len(channels) != 1:
        return None
    return HeadSplit(root, *layouts.pop(), channels.pop(), nodes)


def head_merge(out: Value, ctx: PassContext, seq_first: bool):
    """From the attention result [b, H, s, Dv], the single-reader data-movement ops forward to the furthest value
    holding the heads merged back, [b, s, H*Dv] ([s, b, H*Dv] when ``seq_first``) in row-major order, whatever its
    shape: returns (nodes, value, its shape for a Reshape: -1 for the one dim that varies), or None."""
    chain: list[Node] = []
    v = out
    while len(chain) < 8:
        n = only_use(v)
        if not _moves(n) or n.inputs[0] is not v or len(n.outputs) != 1:
            break
        chain.append(n)
        v = n.outputs[0]
    runs = ctx.shape_runs(out)
    if runs is None or len(runs[0]) != 4:
        return None
    merged_at = set(range(1, len(chain) + 1))  # chain lengths whose result is the merge, in every run
    for shape in runs:
        b, h, s, dv = shape
        pos = torch.arange(math.prod(shape)).reshape(shape)
        merged = pos.transpose(1, 2).reshape(b, s, h * dv)
        want = (merged.transpose(0, 1) if seq_first else merged).reshape(-1)
        ok = set()
        for i, n in enumerate(chain, 1):
            pos = _run(ctx, n, pos, 0)
            if pos is None:
                break
            if torch.equal(pos.reshape(-1), want):
                ok.add(i)
        merged_at &= ok
    for length in sorted(merged_at, reverse=True):
        value = chain[length - 1].outputs[0]
        shapes = ctx.shape_runs(value)
        if shapes is None:
            continue
        target = [d if all(s[i] == d for s in shapes) else -1 for i, d in enumerate(shapes[0])]
        if target.count(-1) <= 1:
            return chain[:length], value, target
    return None
