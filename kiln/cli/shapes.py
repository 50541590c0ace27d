"""Parsing trtexec-style shape specs: ``name:1x3x224x224,name2:1x128``.

Names may contain colons (``input:0:1x3``): the dims are after the last colon. trtexec lets a name be
wrapped in single quotes (``'input:0':1x3``); the quotes are removed.
"""
from __future__ import annotations

from .errors import CLIError

Shapes = dict[str, tuple[int, ...]]


def parse_shapes(spec: str, flag: str = "--shapes") -> Shapes:
    """``"x:1x3x224x224,y:1x128"`` -> ``{"x": (1, 3, 224, 224), "y": (1, 128)}``."""
    out: Shapes = {}
    for item in _split(spec):
        name, sep, dims = item.rpartition(":")
        name = name.strip().strip("'\"")
        if not sep or not name:
            raise CLIError(f"{flag}: malformed shape spec {item!r}: expected NAME:DIMS such as input:1x3x224x224")
        out[name] = parse_dims(dims, f"{flag} {item!r}")
    if not out:
        raise CLIError(f"{flag}: empty shape spec; expected NAME:DIMS[,NAME:DIMS...] such as input:1x3x224x224")
    return out


def parse_dims(dims: str, where: str) -> tuple[int, ...]:
    dims = dims.strip()
    if dims == "":  # a scalar input: `name:`
        return ()
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise CLIError(f"{where}: dimensions {dims!r} are not integers separated by 'x' (e.g. 1x3x224x224)") from None
    if any(d < 0 for d in shape):
        raise CLIError(f"{where}: dimensions must not be negative, got {dims!r}")
    return shape


def format_shapes(shapes: Shapes) -> str:
    return ",".join(f"{k}:{'x'.join(map(str, v))}" for k, v in shapes.items())


def parse_name_files(spec: str, flag: str) -> dict[str, str]:
    """``"x:a.npy,y:b.bin"`` -> ``{"x": "a.npy", "y": "b.bin"}`` (trtexec's --loadInputs form)."""
    out = {}
    for item in _split(spec):
        name, sep, path = item.partition(":")
        if item.startswith("'"):  # 'name:0':file
            end = item.find("'", 1)
            name, sep, path = item[1:end], ":", item[end + 2:]
        if not sep or not name or not path:
            raise CLIError(f"{flag}: malformed entry {item!r}: expected NAME:FILE")
        out[name.strip()] = path.strip()
    return out


def check_names(shapes: Shapes, known: list[str], flag: str) -> None:
    unknown = [n for n in shapes if n not in known]
    if unknown:
        raise CLIError(f"{flag}: unknown input name(s) {', '.join(map(repr, unknown))}; the model's inputs are "
                       f"{', '.join(map(repr, known)) or '(none)'}")


def _split(spec: str) -> list[str]:
    # Commas separate entries, except inside quotes ('a,b':1x2).
    items, cur, quote = [], "", False
    for ch in spec:
        if ch == "'":
            quote = not quote
        if ch == "," and not quote:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [i.strip() for i in items if i.strip()]
