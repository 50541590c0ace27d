"""ONNX -> kiln Graph. The only module that imports onnx (with external_data.py, which reads tensors' data
files for it).

Handles: paths, bytes and ModelProtos; external data; initializers (dense and sparse); Constant
nodes (become graph constants); subgraph attributes (If/Loop/Scan bodies, reading outer-scope
values); model-local functions and schema-defined functions for ops without a Kiln kernel (inlined,
recorded in ``graph.meta['expanded_functions']``); fixed and symbolic dims. Every unsupported op of
the model is reported at once.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..errors import GraphError, ModelFormatError, UnsupportedOpError
from ..ir.convert import numpy_to_torch
from ..ir.dtype import DType
from ..ir.graph import Graph, Node, Value
from ..ir.types import OptionalType, SequenceType, TensorType, ValueType
from ..ops import Registry, default_registry
from .external_data import load_external

MIN_OPSET = 1
_ONNX_DOMAINS = ("", "ai.onnx")


def load_model(model: "str | os.PathLike | bytes | onnx.ModelProto", base_dir: str | None = None) -> onnx.ModelProto:
    """Read a ModelProto with its external data, turning every decode/IO problem into ModelFormatError."""
    if isinstance(model, onnx.ModelProto):
        proto, where = model, "the ModelProto"
    else:
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.is_file():
                raise ModelFormatError(f"model file {str(path)!r} does not exist or is not a file")
            try:
                data = path.read_bytes()
            except OSError as e:
                raise ModelFormatError(f"cannot read model file {str(path)!r}: {e}") from e
            base_dir = base_dir or str(path.parent)
            where = f"model file {str(path)!r}"
        elif isinstance(model, (bytes, bytearray, memoryview)):
            data = bytes(model)
            where = "model bytes"
        else:
            raise ModelFormatError(f"expected a path, bytes or onnx.ModelProto, got {type(model).__name__}")
        if not data:
            raise ModelFormatError(f"{where} is empty")
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise ModelFormatError(f"{where} is not a valid ONNX model (truncated or corrupt protobuf): {e}") from e
        if not proto.HasField("graph"):
            raise ModelFormatError(f"{where} holds no graph: not an ONNX model, or truncated")
    bad = _bad_string_field(proto)
    if bad:
        raise ModelFormatError(f"{where} is corrupt: string field {bad} is not valid UTF-8")
    load_external(proto, base_dir)
    return proto


def _bad_string_field(msg, path: str = "model") -> str | None:
    """The path of the first string field protobuf could not decode (it hands those back as bytes), if any."""
    from google.protobuf.descriptor import FieldDescriptor
    try:
        fields = msg.ListFields()
    except UnicodeDecodeError:
        return path
    for fd, val in fields:
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == FieldDescriptor.LABEL_REPEATED
        items = val if repeated else [val]
        if fd.type == FieldDescriptor.TYPE_STRING:
            if not all(isinstance(x, str) for x in items):
                return f"{path}.{fd.name}"
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            for i, x in enumerate(items):
                bad = _bad_string_field(x, f"{path}.{fd.name}" + (f"[{i}]" if repeated else ""))
                if bad:
                    return bad
    return None


def parse(model: "str | os.PathLike | bytes | onnx.ModelProto", *, registry: Registry | None = None,
          base_dir: str | None = None, onnxruntime_fallback: bool = False) -> Graph:
    """Parse an ONNX model into a kiln Graph; raise ModelFormatError, GraphError or UnsupportedOpError.

    ``onnxruntime_fallback``: a node no Kiln kernel, plugin or ONNX function implements becomes a
    kiln::OnnxRuntimeNode (run by onnxruntime on the host) instead of an error; each one is listed in
    ``graph.meta["onnxruntime_fallback"]`` as (node, "domain::op")."""
    proto = load_model(model, base_dir)
    return _Importer(proto, registry or default_registry(), onnxruntime_fallback).run()


# ---------------------------------------------------------------------------------------------
def tensor_from_proto(t: onnx.TensorProto, what: str = "") -> tuple[torch.Tensor, DType]:
    if t.data_type == onnx.TensorProto.STRING:
        raise _Unsupported("string tensors are not supported")
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001 - onnx raises assorted types for malformed tensors
        raise ModelFormatError(f"tensor {t.name or what!r} cannot be decoded: {e}") from e
    try:
        tensor, dtype = numpy_to_torch(arr)
    except TypeError as e:
        raise ModelFormatError(f"tensor {t.name or what!r}: {e}") from e
    if DType(t.data_type) is not dtype:  # numpy may widen (e.g. uint4 read as uint8); trust the proto
        dtype = DType(t.data_type)
    return tensor, dtype


def value_type(tp: onnx.TypeProto) -> ValueType:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        tt = tp.tensor_type
        dtype = DType(tt.elem_type) if tt.elem_type in DType._value2member_map_ and tt.elem_type else None
        shape = None
        if tt.HasField("shape"):
            shape = tuple(_dim(d) for d in tt.shape.dim)
        return TensorType(dtype, shape)
    if kind == "sequence_type":
        return SequenceType(value_type(tp.sequence_type.elem_type) if tp.sequence_type.HasField("elem_type") else None)
    if kind == "optional_type":
        return OptionalType(value_type(tp.optional_type.elem_type) if tp.optional_type.HasField("elem_type") else None)
    if kind == "sparse_tensor_type":
        st = tp.sparse_tensor_type
        return TensorType(DType(st.elem_type) if st.elem_type in DType._value2member_map_ and st.elem_type else None,
                          None)
    return TensorType()


def _dim(d) -> "int | str | None":
    if d.HasField("dim_value"):
        return d.dim_value if d.dim_value >= 0 else None  # old exporters write -1 for "unknown"
    return d.dim_param or None


class _Unsupported(Exception):
    """Internal: a node cannot be imported; collected into one UnsupportedOpError."""


class _Importer:
    def __init__(self, proto: onnx.ModelProto, registry: Registry, onnxruntime_fallback: bool = False):
        self.proto = proto
        self.registry = registry
        self.onnxruntime_fallback = onnxruntime_fallback
        self.fallbacks: list[tuple[str, str]] = []  # (node, "domain::op") handed to onnxruntime
        self.unsupported: list[tuple[str, str, str, str]] = []
        self.opsets = {("" if o.domain in _ONNX_DOMAINS else o.domain): o.version for o in proto.opset_import}
        if "" not in self.opsets:
            self.opsets[""] = 1 if proto.ir_version < 3 else onnx.defs.onnx_opset_version()
        newest = onnx.defs.onnx_opset_version()
        if self.opsets[""] > newest:
            raise ModelFormatError(f"model uses ai.onnx opset {self.opsets['']}, newer than the newest this Kiln "
                                   f"knows ({newest}); upgrade kiln/onnx or export with opset <= {newest}")
        self.functions = {(f.domain, f.name): f for f in proto.functions}
        self.expanded: list[str] = []
        self._uid = itertools.count()
        self._reserved: set[int] = set()  # ids of call outputs awaiting their definition in a function body
        self._inlining: list[tuple[str, str]] = []  # (domain, op) of the function calls being expanded
        self._prefixes: set[str] = set()  # name prefixes given to inlined bodies, kept unique

    def run(self) -> Graph:
        g = self.proto.graph
        graph = Graph(g.name or "main")
        graph.opsets = dict(self.opsets)
        self._fill(graph, g, outer={})
        if self.unsupported:
            raise UnsupportedOpError(self.unsupported)
        graph.meta["expanded_functions"] = self.expanded
        if self.fallbacks:
            graph.meta["onnxruntime_fallback"] = list(self.fallbacks)
        graph.meta["producer"] = f"{self.proto.producer_name} {self.proto.producer_version}".strip()
        graph.meta["ir_version"] = self.proto.ir_version
        graph.verify()
        return graph

    # -- graphs --------------------------------------------------------------------------
    def _fill(self, graph: Graph, g: onnx.GraphProto, outer: dict[str, Value]) -> None:
        scope: dict[str, Value] = {}
        for init in g.initializer:
            if init.name in scope:
                raise GraphError(f"graph {graph.name!r}: initializer name {init.name!r} appears twice")
            try:
                tensor, dtype = tensor_from_proto(init)
            except _Unsupported as e:
                self.unsupported.append((init.name, "", "initializer", str(e)))
                continue
            scope[init.name] = graph.add_constant(init.name, tensor, TensorType(dtype, tuple(tensor.shape)))
        for sp in g.sparse_initializer:
            name = sp.values.name
            if name in scope:
                raise GraphError(f"graph {graph.name!r}: initializer name {name!r} appears twice")
            try:
                tensor, dtype = _sparse_tensor(sp, name)
            except _Unsupported as e:
                self.unsupported.append((name, "", "initializer", str(e)))
                continue
            scope[name] = graph.add_constant(name, tensor, TensorType(DType(sp.values.data_type), tuple(tensor.shape)))
        for inp in g.input:
            if inp.name in scope:  # old exporters list weights as inputs too: treat them as constants
                continue
            if not inp.name:
                raise GraphError(f"graph {graph.name!r} has an input with an empty name")
            v = Value(inp.name, value_type(inp.type))
            scope[inp.name] = graph.add_input(v)
        infos = {vi.name: value_type(vi.type) for vi in itertools.chain(g.value_info, g.output)}
        self._add_nodes(graph, list(g.node), scope, outer, infos)
        for out in g.output:
            v = scope.get(out.name) or outer.get(out.name)
            if v is None:
                raise GraphError(f"graph {graph.name!r} output {out.name!r} is not produced by any node, "
                                 f"input or initializer")
            if v.producer is not None and isinstance(v.type, TensorType) and v.type.dtype is None:
                v.type = value_type(out.type)
            graph.outputs.append(v)
        graph.toposort()

    def _add_nodes(self, graph: Graph, nodes: list, scope: dict[str, Value], outer: dict[str, Value],
                   infos: dict[str, ValueType]) -> None:
        # Outputs first, so nodes listed out of topological order still resolve; toposort fixes the order.
        pending: list[tuple[Any, list[Value | None]]] = []
        for n in nodes:
            outs: list[Value | None] = []
            for name in n.output:
                if not name:
                    outs.append(None)
                    continue
                existing = scope.get(name)
                if existing is not None and existing.id in self._reserved:  # a function call's output
                    self._reserved.discard(existing.id)
                    outs.append(existing)
                    continue
                if existing is not None:
                    raise GraphError(f"node {n.name or n.op_type!r} ({n.op_type}): output name {name!r} is already "
                                     f"defined in graph {graph.name!r} (duplicate value name)")
                v = Value(name, infos.get(name))
                scope[name] = v
                outs.append(v)
            pending.append((n, outs))
        for n, outs in pending:
            self._add_node(graph, n, outs, scope, outer, infos)

    def _lookup(self, name: str, scope, outer, node) -> Value | None:
        if not name:
            return None
        v = scope.get(name) or outer.get(name)
        if v is None:
            raise GraphError(f"node {node.name or node.op_type!r} ({node.op_type}) reads {name!r}, which no node, "
                             f"graph input or initializer defines (dangling name)")
        return v

    def _add_node(self, graph: Graph, n, outs, scope, outer, infos) -> None:
        label = n.name or f"{n.op_type}_{next(self._uid)}"
        domain = "" if n.domain in _ONNX_DOMAINS else n.domain
        inputs = [self._lookup(name, scope, outer, n) for name in n.input]
        if domain == "" and n.op_type == "Constant":
            self._constant(graph, n, outs, label)
            return
        fn = self.functions.get((n.domain, n.op_type))
        if fn is not None:
            self._inline(graph, n, fn, inputs, outs, scope, outer, infos, label)
            return
        opdef = self.registry.get(domain, n.op_type)
        if opdef is None:
            body = self._schema_function(n, domain)
            if body is not None:
                before = len(self.unsupported)
                self._inline(graph, n, body, inputs, outs, scope, outer, infos, label)
                if len(self.unsupported) > before:  # report the op the user wrote, not its expansion
                    inner = sorted({u[2] for u in self.unsupported[before:]})
                    del self.unsupported[before:]
                    self.unsupported.append((label, n.domain, n.op_type, "no Kiln kernel; its ONNX function "
                                             f"expansion needs unsupported op(s) {', '.join(inner)}"))
                return
            if self.onnxruntime_fallback and not any(a.HasField("g") or a.graphs for a in n.attribute):
                self._onnxruntime_node(graph, n, inputs, outs, label, domain)
                return
            self.unsupported.append((label, n.domain, n.op_type, self.registry.why_unsupported(n.domain, n.op_type)))
            return
        try:
            attrs = {a.name: self._attr(a, graph, {**outer, **scope}, label) for a in n.attribute}
        except _Unsupported as e:
            self.unsupported.append((label, n.domain, n.op_type, str(e)))
            return
        why = opdef.check(attrs, [bool(i) for i in n.input], [bool(o) for o in n.output]) if opdef.check else None
        if why:
            self.unsupported.append((label, n.domain, n.op_type, why))
            return
        # Placeholder producer-less outputs are bound now.
        node = Node(n.op_type, inputs, outs, attrs, name=label, domain=domain)
        graph.append(node)

    def _onnxruntime_node(self, graph: Graph, n, inputs, outs, label: str, domain: str) -> None:
        from ..ops.onnxruntime_node import encode_node
        opsets = [f"={self.opsets['']}"] + ([f"{domain}={self.opsets.get(domain, 1)}"] if domain else [])
        attrs = {"node": encode_node(n), "opsets": opsets, "op": f"{n.domain or 'ai.onnx'}::{n.op_type}"}
        graph.append(Node("OnnxRuntimeNode", inputs, outs, attrs, name=label, domain="kiln"))
        self.fallbacks.append((label, attrs["op"]))

    def _constant(self, graph: Graph, n, outs, label: str) -> None:
        if len(n.attribute) != 1 or not outs or outs[0] is None:
            raise GraphError(f"Constant node {label!r} must have exactly one value attribute and one output")
        a = n.attribute[0]
        try:
            if a.name == "value":
                tensor, dtype = tensor_from_proto(a.t, label)
            elif a.name == "sparse_value":
                tensor, dtype = _sparse_tensor(a.sparse_tensor, label)
            elif a.name == "value_float":
                tensor, dtype = torch.tensor(a.f, dtype=torch.float32), DType.FLOAT
            elif a.name == "value_floats":
                tensor, dtype = torch.tensor(list(a.floats), dtype=torch.float32), DType.FLOAT
            elif a.name == "value_int":
                tensor, dtype = torch.tensor(a.i, dtype=torch.int64), DType.INT64
            elif a.name == "value_ints":
                tensor, dtype = torch.tensor(list(a.ints), dtype=torch.int64), DType.INT64
            elif a.name in ("value_string", "value_strings"):
                raise _Unsupported("string tensors are not supported")
            else:
                raise GraphError(f"Constant node {label!r} has unknown attribute {a.name!r}")
        except _Unsupported as e:
            self.unsupported.append((label, "", "Constant", str(e)))
            return
        v = outs[0]
        v.const = tensor
        v.type = TensorType(dtype, tuple(tensor.shape))
        graph.constants[v.name] = v

    def _schema_function(self, n, domain: str):
        """The ONNX schema's function body for an op with no Kiln kernel, if it has one."""
        try:
            schema = onnx.defs.get_schema(n.op_type, self.opsets.get(domain, 1), n.domain or "")
        except Exception:  # noqa: BLE001 - unknown op or domain
            return None
        if schema.has_function:
            self.expanded.append(n.op_type)
            return schema.function_body
        return None

    def _inline(self, graph, n, fn, inputs, outs, scope, outer, infos, label) -> None:
        """Replace a call with the function's body, renaming its internal values uniquely."""
        attrs = {a.name: a for a in n.attribute}
        defaults = {a.name: a for a in getattr(fn, "attribute_proto", [])}
        rename: dict[str, str] = {}
        for formal, actual in zip(fn.input, list(n.input) + [""] * (len(fn.input) - len(n.input))):
            rename[formal] = actual
        for formal, actual in zip(fn.output, n.output):
            rename[formal] = actual
        key = (n.domain, n.op_type)
        if key in self._inlining:
            chain = " -> ".join(op for _, op in self._inlining[self._inlining.index(key):] + [key])
            raise GraphError(f"node {label!r}: function {n.op_type!r} calls itself ({chain}); recursive functions "
                             f"cannot be expanded")
        prefix = f"{label}/"
        while prefix in self._prefixes:  # two calls from nodes of the same name
            prefix = f"{label}#{next(self._uid)}/"
        self._prefixes.add(prefix)
        body = []
        for inner in fn.node:
            c = onnx.NodeProto()
            c.CopyFrom(inner)
            c.name = prefix + (inner.name or inner.op_type)
            c.ClearField("input")
            c.ClearField("output")
            c.input.extend(rename.get(x, prefix + x if x else "") for x in inner.input)
            for x in inner.output:
                if x and x not in rename:
                    rename[x] = prefix + x
            c.output.extend(rename.get(x, "") if x else "" for x in inner.output)
            del c.attribute[:]
            for a in inner.attribute:
                if a.ref_attr_name:
                    src = attrs.get(a.ref_attr_name) or defaults.get(a.ref_attr_name)
                    if src is None:
                        continue
                    b = onnx.AttributeProto()
                    b.CopyFrom(src)
                    b.name = a.name
                    c.attribute.append(b)
                else:
                    c.attribute.append(a)
            body.append(c)
        # The call's outputs were pre-declared; the body's nodes take them over.
        self._reserved.update(v.id for v in outs if v is not None)
        self._inlining.append(key)
        try:
            self._add_nodes(graph, body, scope, outer, infos)
        finally:
            self._inlining.pop()
        for v in outs:
            if v is not None and v.id in self._reserved:
                raise GraphError(f"function {fn.name!r} called by node {label!r} does not define output {v.name!r}")

    # -- attributes ----------------------------------------------------------------------
    def _attr(self, a: onnx.AttributeProto, graph: Graph, scope: dict[str, Value], label: str) -> Any:
        T = onnx.AttributeProto
        if a.type == T.FLOAT:
            return float(a.f)
        if a.type == T.INT:
            return int(a.i)
        if a.type == T.STRING:
            return a.s.decode("utf-8", errors="replace")
        if a.type == T.TENSOR:
            return tensor_from_proto(a.t, label)[0]
        if a.type == T.SPARSE_TENSOR:
            return _sparse_tensor(a.sparse_tensor, label)[0]
        if a.type == T.GRAPH:
            return self._subgraph(a.g, graph, scope, f"{label}/{a.name}")
        if a.type == T.FLOATS:
            return [float(x) for x in a.floats]
        if a.type == T.INTS:
            return [int(x) for x in a.ints]
        if a.type == T.STRINGS:
            return [s.decode("utf-8", errors="replace") for s in a.strings]
        if a.type == T.TENSORS:
            return [tensor_from_proto(t, label)[0] for t in a.tensors]
        if a.type == T.GRAPHS:
            return [self._subgraph(g, graph, scope, f"{label}/{a.name}") for g in a.graphs]
        if a.type == T.TYPE_PROTO:
            return value_type(a.tp)
        if a.type == T.TYPE_PROTOS:
            return [value_type(t) for t in a.type_protos]
        raise GraphError(f"node {label!r}: attribute {a.name!r} has unknown type {a.type}")

    def _subgraph(self, g: onnx.GraphProto, parent: Graph, scope: dict[str, Value], name: str) -> Graph:
        sub = Graph(g.name or name, parent=parent)
        self._fill(sub, g, outer=scope)
        return sub


def _sparse_tensor(sp: onnx.SparseTensorProto, what: str) -> tuple[torch.Tensor, DType]:
    if sp.values.data_type == onnx.TensorProto.STRING:
        raise _Unsupported("string tensors are not supported")
    try:
        return numpy_to_torch(_sparse_to_dense(sp))
    except Exception as e:  # noqa: BLE001 - bad indices, dims or element types surface as assorted errors
        raise ModelFormatError(f"sparse tensor {sp.values.name or what!r} cannot be decoded: "
                               f"{type(e).__name__}: {e}") from e


def _sparse_to_dense(sp: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sp.values)
    indices = numpy_helper.to_array(sp.indices).astype(np.int64)
    dims = tuple(sp.dims)
    dense = np.zeros(int(np.prod(dims)) if dims else 1, dtype=values.dtype)
    if indices.ndim == 2:  # coordinates per value
        flat = np.ravel_multi_index(indices.T, dims)
    else:
        flat = indices
    dense[flat] = values
    return dense.reshape(dims)
