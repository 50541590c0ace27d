"""If branches get the main graph's local optimizations: folding, recognition of activations and norms, epilogue
and elementwise fusion.

Why: an If's branches run through the interpreter node by node, as the exporter wrote them. A model whose work
sits inside an If (silero-vad's ONNX files branch on the sample rate at the top, and again inside) got none of
the folding and fusion its plain export would get: 54 nodes per call in its outer branch and 38-40 in the nested
ones, where these passes leave 29-32 and 15-16 (2-core CPU, 2026-12-07: silero_vad.onnx 1.54-1.63 -> 0.98-1.08
ms per call; on its If-free twin the fusions saved nothing measurable, since a fused CPU region makes the same
op calls).

How: each branch of a main-graph If is optimized as a graph of its own. The outer values it reads (its free
variables) stand in as its inputs for the duration, typed as the main graph's propagation found them, so the
passes see the shapes they need; afterwards the branch has no inputs again and the outer values keep their own
types. Only passes that look at one graph's nodes run here (no horizontal fusion, whose sibling search would
follow an outer value's uses into other graphs; no layout or precision change: a layer with subgraphs stays in
float32, kiln/passes/precision.py). The branch still runs in the interpreter, on the fused ops' kernels.
Nested Ifs are reached by the branch pipeline itself (it ends with this pass). Loop and Scan bodies are left as
they are (their formal inputs change per iteration).
"""
from __future__ import annotations

from typing import Callable

from ..ir.graph import Graph, Node, outer_reads
from ..ir.types import TensorType
from .context import PassContext
from .propagate import symbolic_shape

RunPipeline = Callable[[Graph, PassContext], list]


def optimize_branches(graph: Graph, ctx: PassContext, run: RunPipeline) -> bool:
    """Run ``run(branch, branch_ctx)`` (the branch pipeline) on both branches of every If of ``graph``;
    the rewrites each made are counted in ``ctx.applied`` under their own rule names. Returns whether any
    branch changed."""
    changed = False
    for node in [n for n in graph.nodes if n.domain == "" and n.op_type == "If"]:
        for key in ("then_branch", "else_branch"):
            branch = node.attrs.get(key)
            if isinstance(branch, Graph) and not branch.inputs and branch.nodes:
                changed |= _optimize_branch(node, branch, ctx, run)
    return changed


def _optimize_branch(node: Node, branch: Graph, ctx: PassContext, run: RunPipeline) -> bool:
    free = [v for v in outer_reads(branch) if v.const is None]
    before = _signature(branch)
    # While they stand in as the branch's inputs, the outer values have no producer either: a pattern matcher
    # following producer links would otherwise reach into the main graph and fuse one of its nodes away.
    saved = {v.id: (v.type, v.producer, v.index) for v in free}
    shapes = {}
    try:
        for v in free:  # the main graph's view of each free variable, for the passes' shape questions
            t = ctx.facts.type_of(v)
            if isinstance(t, TensorType) and t.dtype is not None:
                # dims that depend on the profile stay symbolic: a probe's number would let a pass treat them as fixed
                shape = symbolic_shape(v, ctx.facts)
                v.type = TensorType(t.dtype, shape)
                if shape is not None:
                    shapes[v.name] = shape
            v.producer, v.index = None, 0
        branch.inputs = list(free)
        sub = PassContext(branch, ctx.config, ctx.registry, shapes)
        run(branch, sub)
    finally:
        branch.inputs = []
        for v in free:
            v.type, v.producer, v.index = saved[v.id]
    for rule, count in sub.applied.items():
        ctx.applied[rule] = ctx.applied.get(rule, 0) + count
    ctx.rejections += sub.rejections
    ctx.notes += sub.notes
    after = _signature(branch)
    if after != before:
        ctx.applied["optimize_branches"] = ctx.applied.get("optimize_branches", 0) + 1
        ctx.notes.append(f"If {node.label}: branch {branch.name!r} optimized, {before[0]} -> {after[0]} nodes")
        return True
    return False


def _signature(branch: Graph) -> tuple[int, tuple]:
    return len(branch.nodes), tuple((n.domain, n.op_type) for n in branch.nodes)
