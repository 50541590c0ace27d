"""The model an engine was built from, as the engine records it: the identity of its graph and its initializers.

Every build records it in header field ``source``::

    {"graph_sha256": hex digest of the ONNX graph's structure (nodes, attributes, value types, initializer
                     names, dtypes and shapes; not the initializers' values),
     "initializers": {name: [dtype name, shape]},
     "graph": the plan of the ONNX graph itself, with its initializers (refittable engines only, see refit)}

so that a weight-stripped engine can be given its weights by an ONNX file (``Engine.load(path,
weights_from="model.onnx")``) and refuse the wrong one, and a refittable engine can take new values for its
initializers by their ONNX names. The digest leaves the values out: weights from another training run of the
same architecture match.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from ..errors import KilnError, ModelMismatchError
from ..ir.graph import Graph
from .fields import arr, fail, ints, obj, string
from .graph_json import Encoder
from .validate_ops import MAX_DIM, MAX_RANK

MAX_INITIALIZERS = 1 << 20

__all__ = ["record", "initializers", "check_matches", "check_record", "dtype_name"]


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


class _Shapes(Encoder):
    """Encodes a graph's structure: a tensor stands for its dtype and shape, its values are not read."""

    def tensor(self, t: torch.Tensor, hint: str) -> str:
        return f"{dtype_name(t)}{list(t.shape)}"


def initializers(graph: Graph, strict: bool = True) -> dict[str, torch.Tensor]:
    """{name: tensor} of every constant of ``graph`` and its subgraphs (the ONNX initializers, after parsing).
    ``strict``: a name that two (sub)graphs give different constants is refused (a refit by that name would be
    ambiguous); otherwise the first one stands for it."""
    out: dict[str, torch.Tensor] = {}
    for g in graph.walk_graphs():
        for name, v in g.constants.items():
            if name in out:
                if strict and out[name] is not v.const:
                    raise KilnError(f"initializer name {name!r} names two different constants (in two "
                                    f"subgraphs); weights cannot be set by this name")
                continue
            out[name] = v.const
    return out


def record(graph: Graph) -> dict:
    """The source record of ``graph`` (the parsed ONNX model, before any pass)."""
    plan = _Shapes().graph(graph)
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {"graph_sha256": digest,
            "initializers": {k: [dtype_name(t), list(t.shape)] for k, t in initializers(graph, False).items()}}


def check_matches(graph: Graph, rec: dict, what: str) -> None:
    """Raise ModelMismatchError saying how ``graph`` (parsed from ``what``) differs from the model recorded."""
    mine = record(graph)
    theirs = rec["initializers"]
    missing = [k for k in theirs if k not in mine["initializers"]]
    extra = [k for k in mine["initializers"] if k not in theirs]
    if missing or extra:
        raise ModelMismatchError(
            f"{what} is not the model this engine was built from: "
            + (f"it lacks initializers {_few(missing)}" if missing else "")
            + ("; " if missing and extra else "") + (f"it has initializers the engine's model has not: "
                                                     f"{_few(extra)}" if extra else ""))
    for k, want in theirs.items():
        got = mine["initializers"][k]
        if got != want:
            raise ModelMismatchError(f"{what} is not the model this engine was built from: initializer {k!r} is "
                                      f"{got[0]} {got[1]}, the engine's model has {want[0]} {want[1]}")
    if mine["graph_sha256"] != rec["graph_sha256"]:
        raise ModelMismatchError(f"{what} is not the model this engine was built from: its initializers match, "
                                  f"but its graph (nodes, attributes, inputs or outputs) differs (graph digest "
                                  f"{mine['graph_sha256'][:16]}, the engine's model has {rec['graph_sha256'][:16]})")


def _few(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_record(rec: Any, field: str = "header field 'source'") -> dict:
    """Raise EngineFormatError naming the first field of a stored source record that does not fit."""
    obj(rec, field)
    digest = string(rec.get("graph_sha256"), f"{field} 'graph_sha256'")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise fail(f"{field} 'graph_sha256'", "must be 64 lowercase hex digits")
    table = obj(rec.get("initializers"), f"{field} 'initializers'")
    if len(table) > MAX_INITIALIZERS:
        raise fail(f"{field} 'initializers'", f"has {len(table)} entries, at most {MAX_INITIALIZERS} are accepted")
    for k, entry in table.items():
        entry = arr(entry, f"{field} 'initializers' {k!r}", 2)
        if len(entry) != 2:
            raise fail(f"{field} 'initializers' {k!r}", "must be [dtype name, shape]")
        string(entry[0], f"{field} 'initializers' {k!r} dtype")
        ints(entry[1], f"{field} 'initializers' {k!r} shape", 0, MAX_DIM, MAX_RANK)
    if "graph" in rec:
        obj(rec["graph"], f"{field} 'graph'")  # a plan: checked against the registry and weights by check_engine
    return rec

