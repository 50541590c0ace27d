"""Common-subexpression elimination: two nodes with the same op, attributes and inputs compute the same
thing; the second is replaced by the first. Identical small constants are merged first."""
from __future__ import annotations

import torch

from ..ir.graph import Graph
from .context import PassContext
from .rewrite import has_subgraphs, replace_uses



def _attr_key(v):
    if isinstance(v, torch.Tensor):
        return ("tensor", str(v.dtype), tuple(v.shape), tuple(v.flatten().tolist()) if v.numel() <= 64 else id(v))
    if isinstance(v, list):
        return tuple(_attr_key(x) for x in v)
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return ("obj", id(v))


def eliminate_common_subexpressions(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    flat = not has_subgraphs(graph)
    # Merge equal small constants so that nodes reading them become comparable.
    seen_consts: dict = {}
    for name, c in list(graph.constants.items()):
        t = c.const
        if t.numel() > 64:
            continue
        key = (str(t.dtype), tuple(t.shape), tuple(t.flatten().tolist()), c.type)
        first = seen_consts.setdefault(key, c)
        if first is not c and c.uses:
            replace_uses(graph, c, first, flat)
            changed = True
    seen: dict = {}
    for node in list(graph.nodes):
        # never_fold (random ops): two draws are two values, not one
        if ctx.registry.traits(node.domain, node.op_type).never_fold or any(True for _ in node.subgraphs()):
            continue
        key = (node.domain, node.op_type, tuple(v.id if v is not None else None for v in node.inputs),
               tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items())), len(node.outputs))
        first = seen.get(key)
        if first is None:
            seen[key] = node
            continue
        for old, new in zip(node.outputs, first.outputs):
            if old is not None and new is not None:
                replace_uses(graph, old, new, flat)
            elif old is not None:
                break
        else:
            if all(o is None or not o.uses for o in node.outputs) and \
                    not any(o in graph.outputs for o in node.outputs if o is not None):
                graph.remove(node)
                ctx.count("eliminate_common_subexpressions")
                changed = True
    return changed
