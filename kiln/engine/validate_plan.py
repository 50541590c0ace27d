"""Checks an engine's plan (the JSON of graph_json.py) before it is decoded into a Graph.

Structure: every graph record has its fields with their types; every value record a name and a type; every
reference an index in range. Order: a node reads only values produced before it (graph inputs, constants,
earlier nodes' outputs) or values of an enclosing graph visible at that node, so the plan is acyclic and
runs in the order stored; each value is produced once. Weights: each constant's tensor is in the weights
section with the dtype and shape its record declares. Ops: each node's op is in the op registry, and its
attributes pass the rules of validate_ops.py. Subgraphs nest at most ``MAX_SUBGRAPH_DEPTH`` deep.

The checker recurses once per subgraph level and once per nested attribute list or type record; the JSON
depth limit of the loader (bounded_json.py) bounds both.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import EngineFormatError
from ..ir.dtype import DType
from .fields import arr, fail, integer, number, obj, show, string
from .validate_ops import MAX_DIM, MAX_RANK, Input, NodeFacts, check_meta, check_node

MAX_SUBGRAPH_DEPTH = 24  # If/Loop/Scan bodies inside each other; real models nest a handful
MAX_REFS = 1 << 20  # inputs or outputs of one node
_DTYPES = {int(d) for d in DType}
_FLOAT_NAMES = ("nan", "inf", "-inf")  # how graph_json stores non-finite floats: {"float": repr(x)}


class _Graph:
    """Marker for a subgraph attribute in the plain attributes op rules see."""


class _Type:
    """Marker for a type attribute in the plain attributes op rules see."""


def check_plan(plan: Any, tensors: dict[str, torch.Tensor], registry, num_outputs: int) -> None:
    """Raise EngineFormatError naming the first field of ``plan`` that does not fit; ``num_outputs`` is the
    number of output names the header lists."""
    checker = _Checker(tensors, registry)
    checker.graph(plan, "plan", frozenset(), 0)
    if len(plan["outputs"]) != num_outputs:
        raise fail("plan field 'outputs'", f"lists {len(plan['outputs'])} outputs, the header names {num_outputs}")


class _Checker:
    def __init__(self, tensors: dict[str, torch.Tensor], registry):
        self.tensors = tensors
        self.registry = registry

    # -- value types and records ---------------------------------------------------------------------------
    def value_type(self, t: Any, field: str) -> tuple | None:
        """Check a type record; returns the declared tensor shape (or None)."""
        obj(t, field)
        if len(t) != 1:
            raise fail(field, f"must have one kind (tensor, sequence or optional), got {show(t)}")
        (kind, body), = t.items()
        if kind == "tensor":
            if not isinstance(body, list) or len(body) != 2:
                raise fail(field, f"must be [dtype, shape], got {show(body)}")
            dtype, shape = body
            if dtype is not None and (isinstance(dtype, bool) or not isinstance(dtype, int) or dtype not in _DTYPES):
                raise fail(field, f"has an unknown element type {show(dtype)}")
            if shape is None:
                return None
            arr(shape, f"{field} shape", MAX_RANK)
            for d in shape:
                if not (d is None or isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool)
                                                            and -1 <= d <= MAX_DIM)):
                    raise fail(f"{field} shape", f"has a dimension {show(d)} that is not a size, a symbol or null")
            return tuple(shape)
        if kind in ("sequence", "optional"):
            if body is not None:
                self.value_type(body, f"{field} {kind}")
            return None
        raise fail(field, f"has an unknown kind {show(kind)}")

    def weight(self, key: Any, rec: dict, field: str) -> None:
        """A constant's tensor exists and has the dtype and shape its value record declares."""
        string(key, field)
        t = self.tensors.get(key)
        if t is None:
            raise fail(field, f"names weight {show(key)}, which is not in the weights section")
        body = rec["type"].get("tensor")
        if body is None:
            raise fail(field, f"is a tensor but its value is declared {show(rec['type'])}")
        dtype, shape = body
        if dtype is not None:
            try:
                want = DType(dtype).torch
            except TypeError:
                raise fail(field, f"is declared {DType(dtype).name}, which no weight can hold") from None
            if t.dtype != want:
                raise fail(field, f"is declared {DType(dtype).name} ({want}), the weight {show(key)} is {t.dtype}")
        if shape is not None and (len(shape) != t.dim() or any(isinstance(d, int) and d >= 0 and d != n
                                                                for d, n in zip(shape, t.shape))):
            raise fail(field, f"is declared with shape {show(shape)}, the weight {show(key)} has {list(t.shape)}")

    # -- graphs ----------------------------------------------------------------------------------------------
    def graph(self, g: Any, path: str, outer: frozenset, depth: int) -> None:
        """``outer``: names of the enclosing graphs' values visible here (what graph_json resolves by name)."""
        if depth > MAX_SUBGRAPH_DEPTH:
            raise fail(path, f"is a subgraph nested {depth} levels deep (at most {MAX_SUBGRAPH_DEPTH})")
        obj(g, path)
        for key, kind in (("name", str), ("values", list), ("inputs", list), ("constants", list), ("nodes", list),
                          ("outputs", list), ("opsets", dict)):
            if key not in g:
                raise fail(f"{path} field {key!r}", "is missing")
            if not isinstance(g[key], kind):
                raise fail(f"{path} field {key!r}", f"must be a {kind.__name__}, got {show(g[key])}")
        for domain, version in g["opsets"].items():
            integer(version, f"{path} field 'opsets' {domain!r}", 1, 10_000)
        recs = g["values"]
        shapes = []
        for i, rec in enumerate(recs):
            field = f"{path} value {i}"
            obj(rec, field)
            string(rec.get("name"), f"{field} name")
            shapes.append(self.value_type(rec.get("type"), f"{field} ({rec['name']!r}) type"))
            if "const" in rec:
                self.weight(rec["const"], rec, f"{field} ({rec['name']!r}) const")

        def ref(i: Any, field: str) -> int:
            return integer(i, field, 0, len(recs) - 1) if recs else integer(i, field, 0, -1)

        defined: set[int] = set()  # produced so far in this graph

        def define(i: int, field: str) -> None:
            if i in defined:
                raise fail(field, f"defines value {i} ({recs[i]['name']!r}) a second time")
            defined.add(i)

        for k, i in enumerate(g["inputs"]):
            define(ref(i, f"{path} input {k}"), f"{path} input {k}")
        constant_names = set()
        for k, i in enumerate(g["constants"]):
            field = f"{path} constant {k}"
            define(ref(i, field), field)
            if "const" not in recs[i]:
                raise fail(field, f"value {i} ({recs[i]['name']!r}) has no weight")
            if recs[i]["name"] in constant_names:  # graph_json keys a graph's constants by name
                raise fail(field, f"repeats the constant name {recs[i]['name']!r}")
            constant_names.add(recs[i]["name"])
        produced_here = set()  # every value some node of this graph produces, to tell local from outer
        for k, nd in enumerate(g["nodes"]):
            outs = obj(nd, f"{path} node {k}").get("outputs")
            for i in arr(outs, f"{path} node {k} outputs", MAX_REFS):
                if i is not None:
                    produced_here.add(ref(i, f"{path} node {k} outputs"))
        local = defined | produced_here

        def read(i: Any, field: str) -> None:
            i = ref(i, field)
            if i in defined:
                return
            if i in local:
                raise fail(field, f"reads value {i} ({recs[i]['name']!r}) before any node produces it "
                                  f"(a cycle, or nodes out of order)")
            if recs[i]["name"] not in outer:
                raise fail(field, f"reads value {i} ({recs[i]['name']!r}), which nothing defines")

        for k, nd in enumerate(g["nodes"]):
            self.node(nd, f"{path} node {k}", recs, shapes, read, ref, define,
                      outer | {recs[i]["name"] for i in defined}, depth)
        for k, i in enumerate(g["outputs"]):
            if i is None:
                raise fail(f"{path} output {k}", "is null")
            read(i, f"{path} output {k}")

    def node(self, nd: dict, path: str, recs: list, shapes: list, read, ref, define, visible: frozenset,
             depth: int) -> None:
        for key, kind in (("op", str), ("domain", str), ("name", str), ("inputs", list), ("outputs", list),
                          ("attrs", dict)):
            if not isinstance(nd.get(key), kind):
                raise fail(f"{path} field {key!r}", f"must be a {kind.__name__}, got {show(nd.get(key))}")
        op, domain = nd["op"], nd["domain"]
        label = f"plan node {nd['name']!r} ({domain + '::' if domain else ''}{op})"
        if self.registry.get(domain, op) is None:
            raise fail(label, f"uses {domain + '::' if domain else ''}{op}, which is not a Kiln operator")
        arr(nd["inputs"], f"{label} inputs", MAX_REFS)
        for k, i in enumerate(nd["inputs"]):
            if i is not None:
                read(i, f"{label} input {k}")
        attrs = {}
        for name, a in nd["attrs"].items():
            attrs[name] = self.attr(a, f"{label} attribute {name!r}", visible, depth, 0)
        for k, i in enumerate(nd["outputs"]):
            if i is not None:
                define(ref(i, f"{label} output {k}"), f"{label} output {k}")
        check_meta(nd.get("meta", {}), label)
        facts = NodeFacts(label, attrs, tuple(None if i is None else Input(shapes[i], self._const(recs[i]))
                                              for i in nd["inputs"]), len(nd["outputs"]))
        try:
            check_node(domain, op, facts)
        except EngineFormatError:
            raise
        except (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError) as e:
            raise fail(label, f"has attributes that do not fit {op}: {type(e).__name__}: {e}") from None

    def _const(self, rec: dict) -> torch.Tensor | None:
        return self.tensors.get(rec["const"]) if "const" in rec else None

    def attr(self, a: Any, field: str, visible: frozenset, depth: int, nesting: int) -> Any:
        """Check an attribute record; return its plain value for the op rules."""
        obj(a, field)
        if len(a) != 1:
            raise fail(field, f"must have one kind, got {show(a)}")
        (kind, body), = a.items()
        if kind == "i":
            return integer(body, field)
        if kind == "f":
            if isinstance(body, dict):
                if len(body) != 1 or body.get("float") not in _FLOAT_NAMES:
                    raise fail(field, f"must be a number or {{'float': 'nan'|'inf'|'-inf'}}, got {show(body)}")
                return float(body["float"])
            return number(body, field, finite=False)
        if kind == "s":
            return string(body, field)
        if kind == "t":
            string(body, field)
            if body not in self.tensors:
                raise fail(field, f"names weight {show(body)}, which is not in the weights section")
            return self.tensors[body]
        if kind == "g":
            self.graph(body, f"{field} subgraph", visible, depth + 1)
            return _Graph()
        if kind == "type":
            self.value_type(body, field)
            return _Type()
        if kind == "list":
            if nesting >= 4:  # lists of lists of ints at most (e.g. kiln::Elementwise sub-attributes)
                raise fail(field, "nests lists too deeply")
            return [self.attr(x, field, visible, depth, nesting + 1) for x in arr(body, field, MAX_REFS)]
        if kind == "none":
            if body is not True:
                raise fail(field, f"must be {{'none': true}}, got {show(a)}")
            return None
        raise fail(field, f"has an unknown kind {show(kind)}")
