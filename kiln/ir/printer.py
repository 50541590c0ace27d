"""A readable text dump of a Graph, one node per line, subgraphs indented."""
from __future__ import annotations

import torch

from .graph import Graph, Node


def _attr(v) -> str:
    if isinstance(v, Graph):
        return f"<graph {v.name}>"
    if isinstance(v, torch.Tensor):
        if v.numel() <= 8:
            return f"tensor({v.flatten().tolist()})"
        return f"tensor<{v.dtype}{list(v.shape)}>"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list) and len(v) > 12:
        return f"[{', '.join(map(str, v[:12]))}, ...]"
    return repr(v)


def _node_line(n: Node) -> str:
    outs = ", ".join(f"%{o.name}: {o.type}" if o is not None else "_" for o in n.outputs)
    ins = ", ".join(f"%{i.name}" if i is not None else "_" for i in n.inputs)
    op = f"{n.domain}::{n.op_type}" if n.domain else n.op_type
    attrs = ", ".join(f"{k}={_attr(v)}" for k, v in n.attrs.items())
    s = f"{outs} = {op}({ins})"
    if attrs:
        s += f" {{{attrs}}}"
    if n.name:
        s += f"  # {n.name}"
    return s


def format_graph(g: Graph, indent: str = "") -> str:
    ins = ", ".join(f"%{v.name}: {v.type}" for v in g.inputs)
    lines = [f"{indent}graph {g.name}({ins}) {{"]
    for v in g.constants.values():
        lines.append(f"{indent}  const %{v.name}: {v.type}")
    for n in g.nodes:
        lines.append(f"{indent}  {_node_line(n)}")
        for k, sg in n.attrs.items():
            for sub in (sg if isinstance(sg, list) else [sg]):
                if isinstance(sub, Graph):
                    lines.append(f"{indent}    {k}:")
                    lines.append(format_graph(sub, indent + "      "))
    outs = ", ".join(f"%{v.name}" for v in g.outputs)
    lines.append(f"{indent}  return {outs}")
    lines.append(f"{indent}}}")
    return "\n".join(lines)
