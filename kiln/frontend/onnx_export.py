"""kiln Graph -> ONNX ModelProto, to look at an optimized graph in Netron.

Standard ops stay standard; Kiln's fused layers become nodes of the ``kiln`` domain (Netron draws unknown
domains as plain boxes). Every node carries the ONNX nodes it stands for, its kernel, precision and (when
profiled) time in its metadata_props and doc_string, and kiln-domain nodes also as ``kiln_*`` attributes, so
the viewer shows what was fused; standard nodes keep only their schema's attributes, so the model passes
onnx.checker. The result is for reading, not for running elsewhere.
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


def export_onnx(graph: Graph, output_names: list[str] | None = None, layer_info: dict | None = None,
                types: dict | None = None) -> onnx.ModelProto:
    """``layer_info`` maps layer name -> {field: text} (kernel, precision, time), written as ``kiln_<field>``
    attributes and into the doc_string; ``types`` maps value id -> inferred type (shapes for the edges and
    the graph outputs, which the checker requires)."""
    g = _graph(graph, layer_info or {}, output_names, types or {})
    opsets = dict(graph.opsets)
    opsets.setdefault(KILN_DOMAIN, 1)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="kiln")
    model.doc_string = "Kiln optimized graph (for viewing; kiln-domain nodes run only in Kiln)"
    return model


def _graph(graph: Graph, info: dict, output_names: list[str] | None = None, types: dict | None = None) -> onnx.GraphProto:
    types = types or {}

    def type_of(v):
        t = types.get(v.id)
        return t if isinstance(t, TensorType) and t.shape is not None else v.type

    nodes = []
    for n in graph.nodes:
        covers = list(n.meta.get("covers") or [n.label])  # a layer horizontal fusion made (its Split) covers none
        attrs = {k: _attr_value(v, info) for k, v in n.attrs.items()}
        attrs = {k: v for k, v in attrs.items() if v is not None}
        facts = {"covers": ", ".join(covers), **{k: str(v) for k, v in info.get(n.label, {}).items()}}
        if n.domain == KILN_DOMAIN:  # a kiln op may carry any attribute; a standard op only its schema's
            attrs.update({f"kiln_{k}": v for k, v in facts.items()})
            attrs["kiln_covers"] = covers
        doc = "\n".join(f"{k}: {v}" for k, v in facts.items())
        node = helper.make_node(n.op_type, [v.name if v is not None else "" for v in n.inputs],
                                [v.name if v is not None else "" for v in n.outputs], name=n.name or None,
                                domain=n.domain or None, doc_string=doc, **attrs)
        for k, v in facts.items():  # the node's properties panel in Netron, for every node
            node.metadata_props.add(key=f"kiln.{k}", value=v)
        nodes.append(node)
    outputs = []
    for i, v in enumerate(graph.outputs):
        name = output_names[i] if output_names and i < len(output_names) else v.name
        if name != v.name:  # keep the engine's output name: an Identity bridges the internal value
            nodes.append(helper.make_node("Identity", [v.name], [name], name=f"output_{name}"))
        outputs.append(_value_info(name, type_of(v)))
    inits = [_tensor(name, v.const) for name, v in graph.constants.items()]
    # intermediate shapes, so the viewer shows them on the edges
    outer = {v.name for v in graph.inputs} | {o.name for o in outputs} | set(graph.constants)
    inner = [_value_info(v.name, type_of(v)) for n in graph.nodes for v in n.outputs
             if v is not None and v.name not in outer and isinstance(type_of(v), TensorType)
             and type_of(v).dtype is not None and type_of(v).shape is not None]
    return helper.make_graph(nodes, graph.name or "kiln", [_value_info(v.name, v.type) for v in graph.inputs],
                             outputs, inits, value_info=inner)


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
        return _graph(v, {})
    if isinstance(v, (list, tuple)):
        if not v:
            return None  # ONNX cannot type an empty list; an absent attribute reads the same
        if all(isinstance(x, bool) for x in v):
            return [int(x) for x in v]
        if all(isinstance(x, (int, float, str)) for x in v) and v:
            kinds = {type(x) for x in v}
            return list(v) if len(kinds) == 1 else [str(x) for x in v]
        if v and all(isinstance(x, Graph) for x in v):
            return [_graph(x, {}) for x in v]
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
