"""Which values share storage, as the plan says it: the one alias analysis of a graph.

Two rules, both read from the plan (no run needed):
- a layer whose op has the ``view`` trait (kiln/ops/registry.py: torch returns a view of input 0) makes no
  memory of its own: its output lives in its input 0's storage;
- a Concat input written in place (the ``in_place`` attribute, kiln/builder/concat_in_place.py) lives in a
  slice of the Concat's output.

The build's memory plan (kiln/builder/memory_plan.py) places a tensor per storage root from this, concat
elimination refuses views with it, and the run-time arena (arena.py) places its tensors by it. A recorded run
only *checks* it (storage identity): a kernel that returns storage this analysis calls fresh (its input, where
no trait says so; a branch returning an outer tensor) keeps that value and the storage it returned out of the
arena, and the context reports it (``ExecutionContext.memory_stats()["unplaceable"]`` and its notes).
"""
from __future__ import annotations

from ..ir.graph import Graph, Node
from ..ops import Registry, default_registry


def is_view(node: Node, registry: Registry | None = None, views: frozenset[str] | None = None) -> bool:
    """Whether ``node``'s output 0 is a view of its input 0 (its op has the ``view`` trait)."""
    if views is None:
        views = (registry or default_registry()).ops_with("view")
    return not node.domain and node.op_type in views and bool(node.inputs) and node.inputs[0] is not None


def storage_roots(graph: Graph, registry: Registry | None = None) -> dict[int, int]:
    """{value id: id of the value whose storage it lives in} for the values of ``graph``'s nodes (not its
    subgraphs) that have no storage of their own; a value missing from the result owns its storage.
    Chains resolve to the end: a view of a view names the first one's source, a Concat input written in place
    into a Concat whose output is written in place into another names the outer Concat's output."""
    views = (registry or default_registry()).ops_with("view")
    part_of = {n.inputs[k].id: n.outputs[0].id for n in graph.nodes if n.attrs.get("in_place")
               for k in n.attrs["in_place"] if n.inputs[k] is not None}
    root: dict[int, int] = {}
    for n in graph.nodes:
        for o in n.outputs:
            if o is None:
                continue
            if is_view(n, views=views):
                src = n.inputs[0].id
                root[o.id] = root.get(src, src)
            elif o.id in part_of:
                root[o.id] = part_of[o.id]  # the Concat comes later: resolved below
    for vid, r in root.items():
        while r in root:
            r = root[r]
        root[vid] = r
    return root
