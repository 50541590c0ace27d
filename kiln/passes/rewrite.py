"""Small graph-editing helpers shared by the passes."""
from __future__ import annotations

import torch

from typing import TYPE_CHECKING

from ..ir.graph import Graph, Node, Value, new_constant  # noqa: F401 - the passes take it from here
from ..ir.types import TensorType

if TYPE_CHECKING:
    from .context import PassContext


def only_use(v: Value) -> Node | None:
    """The single consumer of ``v`` if it has exactly one use and is not a graph output."""
    if len(v.uses) != 1 or is_output(v):
        return None
    return v.uses[0][0]


def several_readers_reason(v: Value) -> str | None:
    """Why a fusion cannot absorb the readers of ``v`` when it is read more than once (or is a graph output):
    the value must still be written for the other readers. None when it has one reader."""
    if is_output(v):
        return f"{v.name!r} is a graph output, so it must be written"
    if len(v.uses) > 1:
        readers = sorted({n.label for n, _ in v.uses})
        return f"{v.name!r} has {len(v.uses)} readers ({', '.join(readers[:4])}{', ...' if len(readers) > 4 else ''}), " \
               f"so it must be written; fusion absorbs a value read once"
    return None


def is_output(v: Value) -> bool:
    g = v.producer.graph if v.producer is not None else None
    return g is not None and any(o is v for o in g.outputs)


def const(v: Value | None) -> torch.Tensor | None:
    return None if v is None else v.const


def scalar(v: Value | None) -> float | None:
    """The value of a one-element constant, else None."""
    c = const(v)
    if c is None or c.numel() != 1:
        return None
    return float(c.reshape(()).to(torch.float64))


def fuse_into(graph: Graph, old: list[Node], new: Node, out: Value) -> None:
    """Put ``new`` where the last node of ``old`` stood, as the producer of ``out`` (the pattern's result), and
    drop ``old``. ``new`` may itself be one of ``old`` (a layer absorbing its consumers): it keeps its inputs."""
    last = old[-1]
    for n in old:
        if n is not new:
            n.detach()
    for n in old[:-1]:
        graph.nodes.remove(n)
        if n is not new:
            n.graph = None
    graph.nodes[graph.nodes.index(last)] = new
    if last is not new:
        last.graph = None
    new.graph = graph
    for o in new.outputs:
        if o is not None and o is not out and o.producer is new:
            o.producer = None
    out.producer, out.index = new, 0
    new.outputs = [out]


def covered(node: Node) -> list[str]:
    """Names of the ONNX nodes an engine layer stands for."""
    return list(node.meta.get("covers", [node.label]))


def merge_covers(new: Node, old: list[Node]) -> None:
    names: list[str] = []
    for n in old:
        for c in covered(n):
            if c not in names:
                names.append(c)
    new.meta["covers"] = names


def tensor_type(v: Value) -> TensorType:
    return v.type if isinstance(v.type, TensorType) else TensorType()



def has_subgraphs(graph: Graph) -> bool:
    return graph.parent is not None or any(True for n in graph.nodes for _ in n.subgraphs())


def replace_uses(graph: Graph, old: Value, new: Value, flat: bool) -> None:
    """``graph.replace_all_uses``; with ``flat`` (from ``not has_subgraphs(graph)``, computed once per pass)
    without its walk over every node's subgraphs, which made a pass replacing many values quadratic."""
    if not flat:
        graph.replace_all_uses(old, new)
        return
    for node, slot in list(old.uses):
        node.set_input(slot, new)
    if any(o is old for o in graph.outputs):
        graph.outputs = [new if o is old else o for o in graph.outputs]


# -- matching and replacing a pattern of nodes (the recognizers) ---------------------------------------------
def producer_of(v: Value | None, *ops: str) -> Node | None:
    """The node making ``v`` when it is one of the standard-domain ``ops`` (and still in a graph), else None."""
    p = v.producer if v is not None else None
    return p if p is not None and p.domain == "" and p.op_type in ops and p.graph is not None else None


def sole_reader(v: Value, *ops: str) -> Node | None:
    """The only reader of ``v`` when it is one of the standard-domain ``ops`` (see only_use), else None."""
    n = only_use(v)
    return n if n is not None and n.domain == "" and n.op_type in ops else None


def replace_pattern(graph: Graph, ctx: "PassContext", rule: str, old: list[Node], op: str, inputs: list,
                    attrs: dict, out: Value, domain: str = "") -> None:
    """Put one node computing ``out`` in place of ``old`` (the last of which produced ``out``)."""
    last = out.producer
    new = Node(op, inputs, [], attrs, name=f"{last.label}.{op.lower()}", domain=domain)
    merge_covers(new, old)
    fuse_into(graph, [n for n in old if n is not last] + [last], new, out)
    ctx.count(rule)  # the build report's fusion counts


def internal_only(nodes: list[Node], out: Value) -> bool:
    """True when no value made inside the pattern (other than ``out``) is read outside it."""
    inside = set(map(id, nodes))
    for n in nodes:
        for o in n.outputs:
            if o is None or o is out:
                continue
            if any(id(u) not in inside for u, _ in o.uses):
                return False
            g = n.graph
            if g is not None and any(x is o for x in g.outputs):
                return False
    return True
