"""JSON from an untrusted file, parsed only once its nesting depth is known to be small.

Python's json parser recurses once per nested array or object: a file holding 100,000 ``[`` raises
RecursionError from json.loads (and everything that walks the result recurses the same way). So the depth is
measured on the text first, with string contents blanked out, in passes that run at C speed (a regex and a
numpy cumulative sum over chunks), and text nested deeper than the limit is refused before parsing.
"""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from ..errors import EngineFormatError

_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # a backslash and the character it escapes
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_CHUNK = 1 << 24  # brackets per numpy pass: bounds the temporary arrays for a large plan
_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def _brackets_outside_strings(text: bytes) -> bytes:
    # Escapes go first (an escaped quote delimits nothing); then every other quote-separated part is a string.
    if b"\\" in text:
        text = _ESCAPE.sub(b"", text)
    return b"".join(text.split(b'"')[0::2]).translate(None, _NOT_BRACKET)


def nesting_depth(text: bytes) -> int:
    """The deepest nesting of arrays/objects in ``text`` (brackets inside strings do not count)."""
    bare = _brackets_outside_strings(text)
    depth = deepest = 0
    for start in range(0, len(bare), _CHUNK):
        steps = _STEP[np.frombuffer(bare, np.uint8, min(_CHUNK, len(bare) - start), start)]
        if not steps.size:
            continue
        levels = np.cumsum(steps, dtype=np.int64) + depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
    return deepest


def loads(text: bytes, max_depth: int, what: str) -> Any:
    """``json.loads`` of ``text`` nested at most ``max_depth`` deep; EngineFormatError naming ``what`` else."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise EngineFormatError(f"{what} is nested {depth} levels deep (at most {max_depth} are accepted)")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # ValueError covers bad UTF-8 and over-long integer literals
        raise EngineFormatError(f"{what} is not valid JSON: {e}") from None
