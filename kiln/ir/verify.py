"""Structural invariants of a Graph. Run after parsing and (in debug mode) after each pass."""
from __future__ import annotations

from ..errors import GraphError
from .graph import Graph


def verify(graph: Graph, _outer: set[int] | None = None) -> None:
    """Raise GraphError naming the first broken invariant.

    Checked: unique value names per graph, every input defined before use (in this graph or an
    enclosing one), producer/use links consistent, outputs defined, no cycles (order is topological).
    """
    defined: set[int] = set(_outer or ())
    names: dict[str, str] = {}

    def define(v, what: str):
        if v.name in names and v.name != "":
            raise GraphError(f"graph {graph.name!r}: value name {v.name!r} defined twice ({names[v.name]} and {what})")
        names[v.name] = what
        defined.add(v.id)

    for v in graph.inputs:
        define(v, "graph input")
    for v in graph.constants.values():
        define(v, "initializer")
    for n in graph.nodes:
        for slot, v in enumerate(n.inputs):
            if v is None:
                continue
            if v.id not in defined:
                if v.producer is not None and v.producer.graph is graph:
                    raise GraphError(f"node {n.label} ({n.op_type}) reads {v.name!r} before it is computed "
                                     f"(graph {graph.name!r} is not in topological order, or has a cycle)")
                raise GraphError(f"node {n.label} ({n.op_type}) reads {v.name!r}, which nothing in graph "
                                 f"{graph.name!r} defines")
            if (n, slot) not in v.uses:
                raise GraphError(f"use-def link broken: {v.name!r} -> {n.label}")
        for sg in n.subgraphs():
            verify(sg, defined)
        for i, o in enumerate(n.outputs):
            if o is None:
                continue
            if o.producer is not n or o.index != i:
                raise GraphError(f"output {o.name!r} of node {n.label} has a wrong producer link")
            define(o, f"output of node {n.label}")
    for o in graph.outputs:
        if o.id not in defined:
            raise GraphError(f"graph {graph.name!r} output {o.name!r} is not computed by any node")
