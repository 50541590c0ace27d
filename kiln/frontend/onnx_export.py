"""kiln Graph -> ONNX ModelProto, to look at an optimized graph in Netron.

Standard ops stay standard; Kiln's fused layers become nodes of the ``kiln`` domain (Netron draws unknown
domains as plain boxes). Every node carries the ONNX nodes it stands for in a ``kiln_covers`` attribute and
its doc_string, so the viewer shows what was fused. The result is for reading, not for running elsewhere.
"""
from __future__ import annotations

import json
from typing import Any

import onnx
import torch
from onnx import helper, numpy_helper

from ..ir.convert import torch_to_numpy
from ..ir.dtype import DType
from ..ir.graph import Graph
from ..ir.types import OptionalType, SequenceType, TensorType

KILN_DOMAIN = "kiln"


def export_onnx(graph: Graph, output_names: list[str] | None = None, layer_info: dict | None = None) -> onnx.ModelProto:
    """``layer_info`` maps layer name -> extra strings (kernel, precision) for the doc_string."""
    g = _graph(graph, layer_info or {}, output_names)
    opsets = dict(graph.opsets)
    opsets.setdefault(KILN_DOMAIN, 1)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="kiln")
    model.doc_string = "Kiln optimized graph (for viewing; kiln-domain nodes run only in Kiln)"
    return model


def _graph(graph: Graph, info: dict, output_names: list[str] | None = None) -> onnx.GraphProto:
    nodes = []
    for n in graph.nodes:
        covers = list(n.meta.get("covers", [n.label]))
        attrs = {k: _attr_value(v, info) for k, v in n.attrs.items()}
        attrs = {k: v for k, v in attrs.items() if v is not None}
        attrs["kiln_covers"] = covers
        doc = f"covers: {', '.join(covers)}"
        if n.label in info:
            doc += "\n" + info[n.label]
        node = helper.make_node(n.op_type, [v.name if v is not None else "" for v in n.inputs],
                                [v.name if v is not None else "" for v in n.outputs], name=n.name or None,
                                domain=n.domain or None, doc_string=doc, **attrs)
        nodes.append(node)
    outputs = []
    for i, v in enumerate(graph.outputs):
        name = output_names[i] if output_names and i < len(output_names) else v.name
        if name != v.name:  # keep the engine's output name: an Identity bridges the internal value
            nodes.append(helper.make_node("Identity", [v.name], [name], name=f"output_{name}"))
        outputs.append(_value_info(name, v.type))
    inits = [_tensor(name, v.const) for name, v in graph.constants.items()]
    return helper.make_graph(nodes, graph.name or "kiln", [_value_info(v.name, v.type) for v in graph.inputs],
                             outputs, inits)


def _tensor(name: str, t: torch.Tensor) -> onnx.TensorProto:
    try:
        dtype = DType.from_torch(t.dtype)
        return numpy_helper.from_array(torch_to_numpy(t.detach().cpu(), dtype), name)
    except Exception:  # noqa: BLE001 - an exotic dtype: keep the name and shape, values as float
        return numpy_helper.from_array(t.detach().cpu().float().numpy(), name)


def _attr_value(v: Any, info: dict) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float, str, bytes)):
        return v
    if isinstance(v, torch.Tensor):
        return _tensor("", v)
    if isinstance(v, Graph):
        return _graph(v, info)
    if isinstance(v, (list, tuple)):
        if not v:
            return None  # ONNX cannot type an empty list; an absent attribute reads the same
        if all(isinstance(x, bool) for x in v):
            return [int(x) for x in v]
        if all(isinstance(x, (int, float, str)) for x in v) and v:
            kinds = {type(x) for x in v}
            return list(v) if len(kinds) == 1 else [str(x) for x in v]
        if v and all(isinstance(x, Graph) for x in v):
            return [_graph(x, info) for x in v]
        if v and all(isinstance(x, torch.Tensor) for x in v):
            return [_tensor("", x) for x in v]
        return json.dumps(v, default=str) if v else None
    if v is None:
        return None
    return json.dumps(v, default=str)  # dicts and other plain data: readable as text in the viewer


def _value_info(name: str, t) -> onnx.ValueInfoProto:
    if isinstance(t, TensorType):
        elem = int(t.dtype) if t.dtype is not None else 0
        shape = None if t.shape is None else [d if isinstance(d, (int, str)) else None for d in t.shape]
        return helper.make_tensor_value_info(name, elem, shape)
    if isinstance(t, (SequenceType, OptionalType)):
        return helper.make_value_info(name, helper.make_sequence_type_proto(helper.make_tensor_type_proto(0, None))
                                      if isinstance(t, SequenceType) else
                                      helper.make_optional_type_proto(helper.make_tensor_type_proto(0, None)))
    return helper.make_empty_tensor_value_info(name)
