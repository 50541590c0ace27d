"""The engine loader validates before it trusts: an engine file's header and plan are checked against their
schema before anything is built from them.

An engine file is hostile data. Its sha256 is unkeyed, so an edited file carries a valid checksum; a field
the loader trusted could crash the process (a zero stride reaches oneDNN's integer division: SIGFPE), hang
it, make it allocate without bound, or raise from deep inside torch. So every field the loader, the runtime
and the tactic binder read is checked here first, and a file that does not fit is an EngineFormatError that
names the field. The header is checked here; the plan in validate_plan.py, its per-op rules in
validate_ops.py; format.py checks the section sizes and the weights' stored dtypes while it unpacks.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import torch

from ..errors import EngineFormatError, KilnError
from .fields import arr, boolean, fail, integer, ints, number, obj, optional, show, string
from .report import BuildReport, LayerInfo
from .source import check_record
from .spec import EngineSpec
from .validate_ops import MAX_DIM, MAX_RANK
from .validate_plan import check_plan

MAX_JSON_DEPTH = 200  # header and plan; a plan nests about 6 levels per subgraph level
MAX_ARENA_BYTES = 1 << 44  # 16 TiB: past any device's memory, and far below where sizes overflow
MAX_NAMES = 1 << 20  # graph outputs, profile inputs
_REQUIRED = ("config", "output_names", "device", "versions", "plan_bytes", "weights_bytes")

__all__ = ["MAX_JSON_DEPTH", "check_header", "check_engine", "check_source_graph", "read_report"]


def check_header(h: Any) -> dict:
    """Raise EngineFormatError naming the first header field that does not fit; returns the header."""
    obj(h, "header")
    for key in _REQUIRED:
        if key not in h:
            raise fail(f"header field {key!r}", "is missing")
    integer(h["plan_bytes"], "header field 'plan_bytes'", 0)
    integer(h["weights_bytes"], "header field 'weights_bytes'", 0)
    for k, rec in obj(h.get("raw_dtypes", {}), "header field 'raw_dtypes'").items():
        if not isinstance(rec, list) or len(rec) != 2:
            raise fail(f"header field 'raw_dtypes' {k!r}", f"must be [dtype name, shape], got {show(rec)}")
        string(rec[0], f"header field 'raw_dtypes' {k!r} dtype")
        ints(rec[1], f"header field 'raw_dtypes' {k!r} shape", 0, MAX_DIM, MAX_RANK)
    for k, name in enumerate(arr(h["output_names"], "header field 'output_names'", MAX_NAMES)):
        string(name, f"header field 'output_names' {k}")
    _check_debug_names(h)
    _check_device(obj(h["device"], "header field 'device'"))
    if "built_for" in h:  # an engine moved to another device and saved there: the device it was built for
        _check_device(obj(h["built_for"], "header field 'built_for'"), "built_for")
    versions = obj(h["versions"], "header field 'versions'")
    for key in ("kiln", "torch"):
        optional(versions, key, string, f"header field 'versions.{key}'")
    for key in ("created", "producer"):
        optional(h, key, string, f"header field {key!r}")
    optional(h, "arena", boolean, "header field 'arena'")
    optional(h, "arena_bytes", integer, "header field 'arena_bytes'", 0, MAX_ARENA_BYTES)
    _check_config(obj(h["config"], "header field 'config'"))
    optional(h, "report", obj, "header field 'report'")
    for k, rec in enumerate(arr(h.get("plugins", []), "header field 'plugins'", 4096)):
        obj(rec, f"header field 'plugins' {k}")
        for key in ("domain", "name", "version", "signature"):
            string(rec.get(key), f"header field 'plugins' {k} {key}")
    optional(h, "weights", string, "header field 'weights'", ("stripped",))  # format 2: absent = stored
    if "source" in h:  # format 2: the model it was built from (source.py)
        check_record(h["source"])
    return h


def _check_debug_names(h: dict) -> None:
    """Header field 'debug_tensors' (absent before debug tensors existed, and in engines without any): the names
    of the plan's outputs after the model's own, distinct, non-empty strings."""
    seen: set[str] = set()
    for k, name in enumerate(arr(h.get("debug_tensors", []), "header field 'debug_tensors'", MAX_NAMES)):
        field = f"header field 'debug_tensors' {k}"
        if not string(name, field):
            raise fail(field, "is empty: a debug tensor has a name")
        if name in seen:
            raise fail(field, f"names {show(name)} a second time")
        seen.add(name)


def _check_debug_values(header: dict, plan: dict) -> None:
    """Each debug tensor labels the plan output of its name (the build names them so, builder.name_debug_outputs):
    a name the plan does not have there is an edited file. The plan's outputs are already checked."""
    first = len(header["output_names"])
    for k, name in enumerate(header.get("debug_tensors", [])):
        index = plan["outputs"][first + k]
        value = plan["values"][index]["name"] if isinstance(index, int) else None
        if value != name:
            raise fail(f"header field 'debug_tensors' {k}",
                       f"names {show(name)}, which is not a tensor of the plan: plan output {first + k} is "
                       f"{show(value)}")


def _check_device(d: dict, key: str = "device") -> None:
    string(d.get("type"), f"header field '{key}.type'")
    optional(d, "name", string, f"header field '{key}.name'")
    if d["type"] == "cpu":
        optional(d, "machine", string, f"header field '{key}.machine'")
        optional(d, "cpu_capability", string, f"header field '{key}.cpu_capability'")
    elif d["type"] == "cuda":
        cap = ints(d.get("capability"), f"header field '{key}.capability'", 0, 1000, 2)
        if len(cap) != 2:
            raise fail(f"header field '{key}.capability'", f"must be [major, minor], got {show(cap)}")
        optional(d, "memory_bytes", integer, f"header field '{key}.memory_bytes'", 0)
        optional(d, "cuda", string, f"header field '{key}.cuda'")


# -- the build configuration ---------------------------------------------------------------------------------
def _fits(v: Any, hint: Any) -> bool:
    """Whether JSON value ``v`` fits the dataclass field type ``hint`` (one level deep; tuples arrive as lists)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, h) for h in typing.get_args(hint))
    if hint is type(None):
        return v is None
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    base = origin or hint
    if base in (list, tuple):
        return isinstance(v, list)
    if base is dict:
        return isinstance(v, dict)
    return isinstance(v, base) if isinstance(base, type) else True


def check_fields(d: dict, cls: type, prefix: str) -> None:
    """Each key of ``d`` that is a field of dataclass ``cls`` holds a value of the field's type (unknown keys
    are left alone: from_json drops them). Errors name ``header field 'PREFIX.FIELD'``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in d and not _fits(d[f.name], hints[f.name]):
            want = str(hints[f.name]).replace("typing.", "")
            raise fail(f"header field '{prefix}.{f.name}'", f"must be {want}, got {show(d[f.name])}")


def _check_config(cfg: dict) -> None:
    """The fields of the stored build configuration that the engine reads (engine/spec.py); the others are a
    record of the build, shown by ``kiln inspect`` and not read at load."""
    check_fields(cfg, EngineSpec, "config")
    string(cfg.get("device", "cpu"), "header field 'config.device'")
    for k, p in enumerate(arr(cfg.get("profiles", []), "header field 'config.profiles'", 1024)):
        field = f"header field 'config.profiles' {k}"
        obj(p, field)
        for key in ("min", "opt", "max"):
            for name, shape in obj(p.get(key), f"{field} {key}").items():
                ints(shape, f"{field} {key} {name!r}", 0, MAX_DIM, MAX_RANK)
    try:
        EngineSpec.from_json(cfg)
    except (KilnError, ValueError, TypeError, KeyError, AttributeError) as e:  # its own checks, e.g. profiles
        raise fail("header field 'config'", f"is not a valid build configuration: {e}") from None


def read_report(h: dict):
    """The build report stored in the header (None when there is none), its fields checked."""
    report = h.get("report")
    if report is None:
        return None
    check_fields(report, BuildReport, "report")
    for k, layer in enumerate(report.get("layers", [])):
        check_fields(obj(layer, f"header field 'report.layers.{k}'"), LayerInfo, f"report.layers.{k}")
    for k, p in enumerate(report.get("pass_seconds", [])):
        if not (isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)):
            raise fail(f"header field 'report.pass_seconds' {k}", f"must be [pass name, seconds], got {show(p)}")
        number(p[1], f"header field 'report.pass_seconds' {k}")
    try:
        return BuildReport.from_json(report)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise fail("header field 'report'", f"is malformed: {type(e).__name__}: {e}") from None


def check_engine(header: dict, plan: Any, weights: dict[str, torch.Tensor], registry, where: str) -> None:
    """The header's config against its device record (after the device check: a GPU engine loaded without a
    GPU is told so first); the plan against its schema, the op registry and the weights. Every error is
    prefixed with ``where``."""
    try:
        device, kind = header["config"].get("device", "cpu"), header["device"]["type"]
        if (device == "cpu") != (kind == "cpu"):
            raise fail("header field 'config.device'", f"is {device!r}, the device record is a {kind!r} device")
        check_plan(plan, weights, registry, len(header["output_names"]) + len(header.get("debug_tensors", [])))
        _check_debug_values(header, plan)
    except EngineFormatError as e:
        raise EngineFormatError(f"{where}: {e}") from None


def check_source_graph(plan: Any, weights: dict[str, torch.Tensor], registry, where: str) -> None:
    """The ONNX graph a refittable engine keeps (header field 'source.graph'), checked like the plan."""
    try:
        outputs = arr(obj(plan, "header field 'source.graph'").get("outputs"), "header field 'source.graph.outputs'")
        check_plan(plan, weights, registry, len(outputs))
    except EngineFormatError as e:
        raise EngineFormatError(f"{where}: in header field 'source.graph': {e}") from None
