"""A Graph as plain data: JSON for structure and attributes, a flat dict of named tensors for weights.

Decoding builds Values, Nodes and Graphs from that data and nothing else: op types are looked up in
the op registry by name, never imported or evaluated.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch

from ..errors import EngineFormatError
from ..ir.dtype import DType
from ..ir.graph import Graph, Node, Value
from ..ir.types import OptionalType, SequenceType, TensorType


def encode_type(t) -> dict:
    if isinstance(t, TensorType):
        return {"tensor": [None if t.dtype is None else int(t.dtype),
                           None if t.shape is None else list(t.shape)]}
    if isinstance(t, SequenceType):
        return {"sequence": None if t.elem is None else encode_type(t.elem)}
    if isinstance(t, OptionalType):
        return {"optional": None if t.elem is None else encode_type(t.elem)}
    return {"tensor": [None, None]}


def decode_type(d: Any):
    if not isinstance(d, dict) or len(d) != 1:
        raise EngineFormatError(f"bad value type record {d!r}")
    (kind, body), = d.items()
    if kind == "tensor":
        dtype, shape = body
        if shape is not None and not all(isinstance(x, (int, str)) or x is None for x in shape):
            raise EngineFormatError(f"bad shape {shape!r}")
        return TensorType(None if dtype is None else DType(dtype), None if shape is None else tuple(shape))
    if kind == "sequence":
        return SequenceType(None if body is None else decode_type(body))
    if kind == "optional":
        return OptionalType(None if body is None else decode_type(body))
    raise EngineFormatError(f"unknown value type kind {kind!r}")


def _float(x: float):
    return x if math.isfinite(x) else {"float": repr(x)}


def _content_key(t: torch.Tensor) -> tuple:
    """dtype, shape and a digest of the bytes: equal keys mean interchangeable constants."""
    flat = t.reshape(-1)
    raw = flat.view(torch.uint8) if flat.numel() and flat.dtype != torch.bool else flat.to(torch.uint8)
    return str(t.dtype), tuple(t.shape), hashlib.sha256(raw.numpy().data).digest()


class Encoder:
    """Collects the weights; each distinct constant is stored once and referenced by its key.

    Tied, aliased and identical constants (tied embeddings, equal LayerNorm weights, an initializer read by
    several subgraphs) share one entry, so the file never depends on how torch happened to lay them out
    (safetensors refuses tensors that share memory), and decoding hands every reader the same tensor.
    """

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self._by_content: dict[tuple, str] = {}
        self._storages: set[int] = set()

    def tensor(self, t: torch.Tensor, hint: str) -> str:
        t = t.detach().cpu().contiguous()
        content = _content_key(t)
        key = self._by_content.get(content)
        if key is not None:
            return key
        key = f"t{len(self.tensors)}:{hint}"
        if t.numel() and t.untyped_storage().data_ptr() in self._storages:
            t = t.clone()  # a different view of a storage already stored: safetensors needs its own memory
        if t.numel():
            self._storages.add(t.untyped_storage().data_ptr())
        self.tensors[key] = t
        self._by_content[content] = key
        return key

    def attr(self, v: Any, hint: str) -> dict:
        if isinstance(v, bool):
            return {"i": int(v)}
        if isinstance(v, int):
            return {"i": v}
        if isinstance(v, float):
            return {"f": _float(v)}
        if isinstance(v, str):
            return {"s": v}
        if isinstance(v, torch.Tensor):
            return {"t": self.tensor(v, hint)}
        if isinstance(v, Graph):
            return {"g": self.graph(v)}
        if isinstance(v, (TensorType, SequenceType, OptionalType)):
            return {"type": encode_type(v)}
        if isinstance(v, (list, tuple)):
            return {"list": [self.attr(x, hint) for x in v]}
        if v is None:
            return {"none": True}
        raise TypeError(f"attribute of type {type(v).__name__} cannot be stored in an engine")

    def graph(self, g: Graph) -> dict:
        ids: dict[int, int] = {}
        values = []

        def vid(v: Value | None) -> int | None:
            if v is None:
                return None
            if v.id not in ids:
                ids[v.id] = len(values)
                rec = {"name": v.name, "type": encode_type(v.type)}
                if v.const is not None:
                    rec["const"] = self.tensor(v.const, v.name)
                values.append(rec)
            return ids[v.id]

        inputs = [vid(v) for v in g.inputs]
        consts = [vid(v) for v in g.constants.values()]
        nodes = []
        for n in g.nodes:
            nodes.append({
                "op": n.op_type, "domain": n.domain, "name": n.name,
                "inputs": [vid(v) for v in n.inputs], "outputs": [vid(v) for v in n.outputs],
                "attrs": {k: self.attr(a, f"{n.name}.{k}") for k, a in n.attrs.items()},
                "meta": _jsonable_meta(n.meta),
            })
        outputs = [vid(v) for v in g.outputs]
        # Values read from an enclosing graph are referenced by name and resolved on decode.
        return {"name": g.name, "values": values, "inputs": inputs, "constants": consts, "nodes": nodes,
                "outputs": outputs, "opsets": g.opsets}


def _jsonable_meta(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v):
            out[k] = list(v)
        elif isinstance(v, dict) and all(isinstance(x, (str, int, float, bool, list)) for x in v.values()):
            out[k] = v
        elif k == "tactic" and isinstance(v, dict):  # {"name": str, "params": {str: plain data}}
            out[k] = json.loads(json.dumps(v))
    return out


def encode_graph(g: Graph) -> tuple[dict, dict[str, torch.Tensor]]:
    enc = Encoder()
    return enc.graph(g), enc.tensors


def decode_graph(d: dict, tensors: dict[str, torch.Tensor], parent: Graph | None = None,
                 outer: dict[str, Value] | None = None) -> Graph:
    try:
        return _decode(d, tensors, parent, outer or {})
    except EngineFormatError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise EngineFormatError(f"engine plan is malformed: {type(e).__name__}: {e}") from None


def _decode(d: dict, tensors, parent, outer) -> Graph:
    g = Graph(str(d["name"]), parent=parent)
    g.opsets = {str(k): int(v) for k, v in d["opsets"].items()}
    values: list[Value | None] = [None] * len(d["values"])
    recs = d["values"]

    def value(i: int | None) -> Value | None:
        if i is None:
            return None
        if not isinstance(i, int) or not 0 <= i < len(recs):
            raise EngineFormatError(f"value index {i!r} out of range")
        if values[i] is None:
            rec = recs[i]
            const = None
            if "const" in rec:
                if rec["const"] not in tensors:
                    raise EngineFormatError(f"weight {rec['const']!r} is missing from the engine")
                const = tensors[rec["const"]]
            values[i] = Value(str(rec["name"]), decode_type(rec["type"]), const=const)
        return values[i]

    for i in d["inputs"]:
        g.add_input(value(i))
    for i in d["constants"]:
        v = value(i)
        g.constants[v.name] = v
    defined = {id(v) for v in g.inputs} | {id(v) for v in g.constants.values()}
    produced: set[int] = set()
    for nd in d["nodes"]:
        for i in nd["outputs"]:
            if i is not None:
                produced.add(i)
    scope = dict(outer)
    for v in g.inputs:
        scope[v.name] = v
    for v in g.constants.values():
        scope[v.name] = v

    def read(i):
        v = value(i)
        if v is None:
            return None
        if id(v) in defined or i in produced:
            return v
        # Not defined here: a value of an enclosing graph, matched by name.
        outer_v = outer.get(v.name)
        if outer_v is None:
            raise EngineFormatError(f"graph {g.name!r} reads {v.name!r}, which nothing defines")
        values[i] = outer_v
        return outer_v

    for nd in d["nodes"]:
        ins = [read(i) for i in nd["inputs"]]
        outs = [value(i) for i in nd["outputs"]]
        for v in outs:
            if v is not None:
                scope[v.name] = v
        attrs = {str(k): _decode_attr(a, tensors, g, scope) for k, a in nd["attrs"].items()}
        node = Node(str(nd["op"]), ins, outs, attrs, name=str(nd["name"]), domain=str(nd["domain"]))
        node.meta.update(nd.get("meta", {}))
        g.append(node)
    g.outputs = [read(i) for i in d["outputs"]]
    return g


def _decode_attr(a: Any, tensors, graph: Graph, scope):
    if not isinstance(a, dict) or len(a) != 1:
        raise EngineFormatError(f"bad attribute record {a!r}")
    (kind, body), = a.items()
    if kind == "i":
        return int(body)
    if kind == "f":
        return float(body["float"]) if isinstance(body, dict) else float(body)
    if kind == "s":
        return str(body)
    if kind == "t":
        if body not in tensors:
            raise EngineFormatError(f"attribute tensor {body!r} is missing from the engine")
        return tensors[body]
    if kind == "g":
        return _decode(body, tensors, graph, dict(scope))
    if kind == "type":
        return decode_type(body)
    if kind == "list":
        return [_decode_attr(x, tensors, graph, scope) for x in body]
    if kind == "none":
        return None
    raise EngineFormatError(f"unknown attribute kind {kind!r}")
