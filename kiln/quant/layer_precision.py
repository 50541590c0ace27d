"""Per-layer precision constraints (trtexec's --layerPrecisions / --precisionConstraints).

``BuilderConfig.layer_precisions`` maps a key to a precision. A key matches a layer by, in this order:
its name or the name of an ONNX node it covers (exact), a glob over those names (``"encoder.0.*"``,
``"*"``), or its op type (``"Softmax"``, ``"kiln::Linear"``; ``MatMul`` and ``Gemm`` also match the
kiln::Linear they became, ``Conv`` the kiln::Conv). Precisions: fp32, fp16, bf16, int8, fp8.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

from ..ir.graph import Node

_NAMES = {"fp32": "fp32", "float32": "fp32", "float": "fp32", "f32": "fp32",
          "fp16": "fp16", "float16": "fp16", "half": "fp16", "f16": "fp16",
          "bf16": "bf16", "bfloat16": "bf16",
          "int8": "int8", "fp8": "fp8", "fp8e4m3": "fp8", "float8": "fp8"}
_ALIASES = {"MatMul": ("Linear",), "Gemm": ("Linear",), "Conv": ("Conv",)}


def normalize(precision: str) -> str:
    p = _NAMES.get(str(precision).lower())
    if p is None:
        raise ValueError(f"unknown layer precision {precision!r}; use one of fp32, fp16, bf16, int8, fp8")
    return p


def validate(table: dict) -> None:
    for k, v in (table or {}).items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"layer_precisions keys must be layer names, globs or op types, got {k!r}")
        normalize(v)


def layer_precision(node: Node, table: dict | None) -> str | None:
    """The precision ``table`` asks for ``node``, or None when no key matches."""
    if not table:
        return None
    names = [n for n in [node.name, *node.meta.get("covers", [])] if n]
    for n in names:
        if n in table:
            return normalize(table[n])
    ops = {node.op_type, f"{node.domain}::{node.op_type}" if node.domain else node.op_type}
    for key, v in table.items():
        if key != "*" and any(ch in key for ch in "*?[") and any(fnmatchcase(n, key) for n in names):
            return normalize(v)
    for key, v in table.items():
        if key in ops or (node.domain == "kiln" and node.op_type in _ALIASES.get(key, ())):
            return normalize(v)
    if "*" in table:
        return normalize(table["*"])
    return None


def parse_spec(spec: str) -> dict[str, str]:
    """trtexec's ``--layerPrecisions`` value, ``"name:fp16,*:fp32"``, as a layer_precisions dict."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, prec = item.rpartition(":")
        if not sep or not name:
            raise ValueError(f"--layerPrecisions item {item!r}: write layerName:precision (e.g. conv1:fp16)")
        out[name] = normalize(prec)
    return out
