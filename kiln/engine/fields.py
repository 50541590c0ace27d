"""Typed reads of fields from an untrusted JSON document: each failure is an EngineFormatError naming the field.

The validators (validate.py, validate_plan.py, validate_ops.py) read every field through these, so a message
always says which field and what was expected (``plan node 'conv1' attribute 'strides' must be ints > 0,
got [0, 1]``), and a value is shown cut short: a hostile file may hold megabytes in one field.
"""
from __future__ import annotations

import math
from typing import Any

from ..errors import EngineFormatError

INT64_MAX = 2**63 - 1


def show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def fail(field: str, why: str) -> EngineFormatError:
    return EngineFormatError(f"{field} {why}")


def obj(v: Any, field: str) -> dict:
    if not isinstance(v, dict):
        raise fail(field, f"must be an object, got {show(v)}")
    return v


def arr(v: Any, field: str, max_len: int | None = None) -> list:
    if not isinstance(v, list):
        raise fail(field, f"must be a list, got {show(v)}")
    if max_len is not None and len(v) > max_len:
        raise fail(field, f"has {len(v)} entries, at most {max_len} are accepted")
    return v


def string(v: Any, field: str, choices: tuple | None = None) -> str:
    if not isinstance(v, str):
        raise fail(field, f"must be a string, got {show(v)}")
    if choices is not None and v not in choices:
        raise fail(field, f"must be one of {', '.join(map(repr, choices))}, got {show(v)}")
    return v


def boolean(v: Any, field: str) -> bool:
    if not isinstance(v, bool):
        raise fail(field, f"must be true or false, got {show(v)}")
    return v


def integer(v: Any, field: str, lo: int = -INT64_MAX - 1, hi: int = INT64_MAX) -> int:
    """An int (never a bool: JSON true is not 1 here) in [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise fail(field, f"must be an integer, got {show(v)}")
    if not lo <= v <= hi:
        raise fail(field, f"must be in [{lo}, {hi}], got {show(v)}")
    return v


def number(v: Any, field: str, finite: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise fail(field, f"must be a number, got {show(v)}")
    if finite and not math.isfinite(v):
        raise fail(field, f"must be a finite number, got {show(v)}")
    return float(v)


def ints(v: Any, field: str, lo: int, hi: int, max_len: int = 64) -> list[int]:
    """A list of ints, each in [lo, hi]."""
    items = arr(v, field, max_len)
    if not all(not isinstance(x, bool) and isinstance(x, int) and lo <= x <= hi for x in items):
        raise fail(field, f"must be a list of integers in [{lo}, {hi}], got {show(v)}")
    return items


def optional(d: dict, key: str, check, field: str, *args, **kwargs):
    """``check(d[key], field, ...)`` when the key is present (and not null); None otherwise."""
    v = d.get(key)
    return None if v is None else check(v, field, *args, **kwargs)
