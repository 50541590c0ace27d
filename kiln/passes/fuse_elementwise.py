"""Chains of elementwise ops fused into one kiln::Elementwise region.

A region grows from a node along its output while the next node is elementwise, reads the previous result,
and that result has no other reader. Its ``program`` names each step's operands (region inputs iN,
earlier results tN); the GPU backend generates one kernel from it.
"""
from __future__ import annotations

from ..ir.graph import Graph, Node, Value
from .context import PassContext
from .rewrite import fuse_into, merge_covers, only_use, several_readers_reason

ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Abs", "Neg", "Reciprocal", "Relu", "Sigmoid", "Tanh",
    "Erf", "Gelu", "LeakyRelu", "HardSigmoid", "HardSwish", "Softplus", "Swish", "Elu", "Floor", "Ceil", "Sin",
    "Cos", "Max", "Min", "Where", "Not", "And", "Or", "Equal", "Less", "Greater", "Clip",
})


def _encodable(n: Node) -> bool:
    return all(isinstance(v, (int, float, str)) for v in n.attrs.values())


def _sub_attrs(n: Node) -> list[str]:
    out = []
    for k, v in n.attrs.items():
        kind = "i" if isinstance(v, int) else "f" if isinstance(v, float) else "s"
        out.append(f"{k}={kind}:{v!r}" if kind == "f" else f"{k}={kind}:{v}")
    return out


def _is_elementwise(n: Node | None, graph: Graph) -> bool:
    return n is not None and n.graph is graph and n.domain == "" and n.op_type in ELEMENTWISE and _encodable(n) \
        and all(o is not None for o in n.outputs) and len(n.outputs) == 1


def fuse_elementwise(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for start in list(graph.nodes):
        if start.graph is not graph or not _is_elementwise(start, graph):
            continue
        prev = start.inputs[0].producer if start.inputs and start.inputs[0] is not None else None
        if _is_elementwise(prev, graph) and only_use(prev.outputs[0]) is start:
            continue  # not the head of its chain
        chain = [start]
        while True:
            last = chain[-1].outputs[0]
            nxt = only_use(last)
            if nxt is None and len(last.uses) > 1:
                fusable = [n for n, _ in last.uses if _is_elementwise(n, graph)]
                if fusable:
                    ctx.reject("fuse_elementwise", [chain[-1], *fusable], several_readers_reason(last))
            if not _is_elementwise(nxt, graph):
                break
            chain.append(nxt)
        if len(chain) < 2:
            continue
        inputs: list[Value] = []
        program, sub_attrs = [], []
        made: dict[int, int] = {}
        for i, n in enumerate(chain):
            args = []
            for v in n.inputs:
                if v is None:
                    args.append("")
                elif v.id in made:
                    args.append(f"t{made[v.id]}")
                else:
                    if v not in inputs:
                        inputs.append(v)
                    args.append(f"i{inputs.index(v)}")
            if "" in args:
                break
            program.append(f"{n.op_type}({','.join(args)})")
            sub_attrs.append(_sub_attrs(n))
            made[n.outputs[0].id] = i
        if len(program) != len(chain):
            continue
        out = chain[-1].outputs[0]
        region = Node("Elementwise", inputs, [], {"program": program, "attrs": sub_attrs},
                      name=f"{chain[0].label}.region", domain="kiln")
        merge_covers(region, chain)
        fuse_into(graph, chain, region, out)
        ctx.count("fuse_elementwise", len(chain))
        changed = True
    return changed
