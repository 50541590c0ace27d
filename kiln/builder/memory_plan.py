"""Activation memory, a step over the Plan: the lifetimes of the intermediate tensors at the largest shapes the
engine accepts, placed in one arena by the pure planner (kiln/engine/memory.py). Which values share storage
comes from the one alias analysis (kiln/engine/aliases.py): views and Concat inputs written in place have no
memory of their own."""
from __future__ import annotations

from dataclasses import replace

from ..engine.aliases import storage_roots
from ..engine.memory import Lifetime, plan_memory
from ..ir.graph import Graph
from ..ir.types import TensorType
from ..ops import Registry
from ..passes.propagate import Facts, propagate
from .plan import Plan


def plan_activation_memory(plan: Plan, max_shapes: dict[str, tuple] | None) -> Plan:
    """The plan with its memory planned at ``max_shapes`` (the largest profile shapes; None: the graph's own),
    ``arena`` set (whether a run-time arena can hold every placed tensor: not when some sizes are
    data-dependent or unbounded, or the graph has control flow whose results vary in shape) and its notes."""
    graph, registry = plan.graph, plan.registry
    facts = propagate(graph, max_shapes, registry)
    undetermined = _data_dependent(graph, facts)
    notes = []
    if undetermined:
        notes.append(f"memory plan: {len(undetermined)} tensors have data-dependent sizes, so intermediates come "
                     f"from torch's allocator at run time (e.g. {', '.join(undetermined[:3])})")
    if any(d in facts.symbols for t in facts.types.values() if isinstance(t, TensorType) and t.shape
           for d in t.shape if isinstance(d, int)):
        notes.append("memory plan: some input dims are dynamic and no profile bounds them, so the arena is sized "
                     "at run time for each input shape")
        return replace(plan, memory=None, arena=not undetermined, notes=plan.notes + tuple(notes))
    lts, unknown = lifetimes(graph, facts, registry)
    if unknown and not undetermined:
        notes.append(f"memory plan: {len(unknown)} tensors of unknown size are left out of the plan "
                     f"(e.g. {', '.join(unknown[:3])})")
    return replace(plan, memory=plan_memory(lts), arena=not undetermined and not unknown,
                   notes=plan.notes + tuple(notes))


def lifetimes(graph: Graph, facts: Facts, registry: Registry | None = None) -> tuple[list[Lifetime], list[str]]:
    """Intermediate tensors (not inputs, constants or outputs) with sizes at ``facts``' shapes.

    A view's reads extend the life of the tensor it views; a tensor viewed by a graph output is output memory.
    Layers whose op has the ``view`` trait (torch returns a view of input 0) have no memory of their own, nor
    have Concat inputs written in place (kiln/engine/aliases.py says which values share storage).
    Returns the lifetimes and the names of values whose size is unknown (data-dependent shapes)."""
    roots = storage_roots(graph, registry)  # views and Concat parts in place: no storage of their own
    outputs = {v.id for v in graph.outputs}
    index = {}
    last: dict[int, int] = {}
    first: dict[int, int] = {}  # a storage root -> the first step writing any part of it
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            if v is not None:
                r = roots.get(v.id, v.id)
                last[r] = max(last.get(r, i), i)
        for o in n.outputs:
            if o is None:
                continue
            r = roots.get(o.id)
            if r is None:
                index[o.id] = (i, o)
                continue
            first.setdefault(r, i)
            if o.id in outputs:  # a tensor viewed by a graph output is output memory
                outputs.add(r)
    index = {vid: (min(start, first.get(vid, start)), v) for vid, (start, v) in index.items()}
    result, unknown = [], []
    for vid, (start, v) in index.items():
        if vid in outputs or v.const is not None:
            continue
        t = facts.type_of(v)
        if not isinstance(t, TensorType) or not t.is_static or t.dtype is None:
            unknown.append(v.name)
            continue
        numel = 1
        for d in t.shape:
            numel *= d
        try:
            size = numel * t.dtype.itemsize
        except TypeError:
            unknown.append(v.name)
            continue
        result.append(Lifetime(size, start, last.get(vid, start)))
    return result, unknown


def _data_dependent(graph: Graph, facts: Facts) -> list[str]:
    """Names of values (all scopes' nodes' outputs) whose shape is not fixed by the input shapes: then one
    run's tensor sizes say nothing about the next run's at the same input shapes."""
    out = []
    for n in graph.all_nodes():
        for o in n.outputs:
            if o is None:
                continue
            t = facts.type_of(o)
            if isinstance(t, TensorType):
                if t.shape is None or any(d is None or isinstance(d, str) for d in t.shape):
                    out.append(o.name)
            elif t is not None:  # sequences, optionals: element shapes are not tracked
                out.append(o.name)
    return out
