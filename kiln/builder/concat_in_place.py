"""Concat elimination (tensor fusion): producers write straight into slices of a Concat's output.

A step over the Plan (plan.py), after the lowering bound the tactics, because it depends on them: an input
qualifies when its producer's kernel computes into a given buffer (the plan layer's ``accepts_out``), the
input is a fresh tensor used only by this Concat, and neither it nor the Concat's output is a graph output.
The qualifying positions are stored on the Concat node as the attribute ``in_place`` (plain data in the
engine file); the memory plan then treats those inputs as parts of the Concat's output
(kiln/engine/aliases.py, memory_plan.py) and the runtime hands their producers the slices
(kiln/engine/arena.py). Every Concat input that does not qualify is reported with the reason.
"""
from __future__ import annotations

from dataclasses import replace

from ..engine.aliases import is_view
from .plan import Plan


def mark_concats_in_place(plan: Plan) -> Plan:
    """The plan with its Concat layers marked (``in_place`` on their nodes), the count of inputs written in place
    and a rejection (report JSON) for each Concat with an input that cannot be."""
    graph = plan.graph
    views = plan.registry.ops_with("view")
    outputs = {v.id for v in graph.outputs}
    marked, rejections = 0, []
    for n in graph.nodes:
        if n.domain or n.op_type != "Concat" or not n.outputs or n.outputs[0] is None:
            continue
        layer = plan.layer(n)
        if n.outputs[0].id in outputs:
            rejections.append(_reject(n, "its output is a graph output (outputs belong to the caller)"))
            continue
        if layer is None or not layer.accepts_out:
            rejections.append(_reject(n, "the Concat runs on the host"))
            continue
        picks, reasons = [], []
        for k, v in enumerate(n.inputs):
            why = _why_not(v, n, outputs, plan, views)
            if why is None:
                picks.append(k)
            else:
                reasons.append(f"input {k} ({v.name if v is not None else '-'}): {why}")
        if picks:
            n.attrs["in_place"] = picks
            marked += len(picks)
        if reasons:
            rejections.append(_reject(n, "; ".join(reasons)))
    return replace(plan, concat_inputs_in_place=plan.concat_inputs_in_place + marked,
                   rejections=plan.rejections + tuple(rejections))


def _why_not(v, concat, outputs, plan: Plan, views) -> str | None:
    if v is None or v.const is not None:
        return "a constant"
    p = v.producer
    if p is None:
        return "a graph input"
    if v.id in outputs:
        return "a graph output"
    if len(v.uses) != 1 or v.uses[0][0] is not concat:
        return "read by other layers too"
    if is_view(p, views=views):
        return f"made by {p.op_type}, a view of another tensor"
    if len([o for o in p.outputs if o is not None]) != 1:
        return f"{p.op_type} has several outputs"
    s = plan.layer(p)
    if s is None or not s.accepts_out:
        tactic = f" (tactic {s.tactic})" if s is not None and s.tactic else ""
        return f"{p.op_type}'s kernel{tactic} cannot write into a given buffer on this device"
    return None


def _reject(n, reason: str) -> dict:
    return {"rule": "concat_in_place", "nodes": [n.label], "reason": reason}
