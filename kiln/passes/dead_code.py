"""Dead-code elimination: drop nodes none of whose outputs reach a graph output, and unused constants."""
from __future__ import annotations

from ..ir.graph import Graph, outer_reads
from .context import PassContext


def eliminate_dead_code(graph: Graph, ctx: PassContext) -> bool:
    live = {v.id for v in graph.outputs}
    keep = []
    for node in reversed(graph.nodes):
        if any(o is not None and o.id in live for o in node.outputs):
            keep.append(node)
            live.update(v.id for v in node.inputs if v is not None)
            for sg in node.subgraphs():
                live.update(v.id for v in outer_reads(sg))
    dead = [n for n in graph.nodes if n not in keep]
    for n in dead:
        n.detach()
        graph.nodes.remove(n)
        n.graph = None
    unused = [k for k, v in graph.constants.items() if v.id not in live and not v.uses]
    for k in unused:
        del graph.constants[k]
    if dead:
        ctx.count("eliminate_dead_code", len(dead))
    return bool(dead or unused)
