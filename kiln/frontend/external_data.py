"""External data of an ONNX model: each tensor's bytes read from the file its entries name.

The entries (location, offset, length) come from the model file and are untrusted: the file must lie inside the
model's folder, and offset and length are checked against the file's size and the tensor's shape before
anything is read or allocated. Every failure is a ModelFormatError naming the tensor.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx

from ..errors import ModelFormatError
from ..ir.dtype import DType


def load_external(proto: onnx.ModelProto, base_dir: str | None) -> None:
    """Move every external tensor's bytes into the proto (raw_data), or raise ModelFormatError naming it."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data
    tensors = [t for t in _get_all_tensors(proto) if uses_external_data(t)]
    if not tensors:
        return
    if base_dir is None:
        raise ModelFormatError("the model uses external data files, but was given as bytes/ModelProto without "
                               "base_dir: pass base_dir= (the folder holding the data files) or a file path")
    base = Path(base_dir).resolve()
    for t in tensors:
        t.raw_data = _read_external(t, base)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def _read_external(t: onnx.TensorProto, base: Path) -> bytes:
    """The bytes of ``t`` from its external data file. The entries are untrusted: the file must lie inside
    ``base``, and offset and length are checked against the file's size and the tensor's shape before anything is
    read or allocated (a length of 1e12 must be an error, not a MemoryError)."""
    name = t.name or "<unnamed>"
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    if not loc:
        raise ModelFormatError(f"tensor {name!r}: external data has no location")
    if os.path.isabs(loc) or Path(loc).drive:
        raise ModelFormatError(f"tensor {name!r}: external data location {loc!r} is absolute; it must be relative "
                               f"to the model's folder {str(base)!r}")
    try:
        target = (base / loc).resolve()  # (resolve follows symlinks, so a link pointing out is caught too)
    except (OSError, ValueError) as e:  # e.g. an embedded NUL, a symlink loop
        raise ModelFormatError(f"tensor {name!r}: external data location {loc!r} is not a usable path: {e}") from e
    if base not in target.parents:
        raise ModelFormatError(f"tensor {name!r}: external data location {loc!r} points outside {str(base)!r}")
    if not target.is_file():
        raise ModelFormatError(f"tensor {name!r}: external data file {str(target)!r} is missing")
    offset = _external_int(info.get("offset", "0"), "offset", name)
    need = _data_bytes(t, name)
    if "length" in info and _external_int(info["length"], "length", name) != need:
        raise ModelFormatError(f"tensor {name!r}: external data length {info['length']} does not match its shape "
                               f"{list(t.dims)} of {DType(t.data_type).name}, which takes {need} bytes")
    try:
        with open(target, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if offset + need > size:
                raise ModelFormatError(f"tensor {name!r}: external data at offset {offset} with {need} bytes runs "
                                       f"past the end of {str(target)!r} ({size} bytes)")
            f.seek(offset)
            raw = f.read(need)
    except OSError as e:
        raise ModelFormatError(f"tensor {name!r}: cannot read external data file {str(target)!r}: {e}") from e
    if len(raw) != need:  # the file shrank under us
        raise ModelFormatError(f"tensor {name!r}: external data file {str(target)!r} is truncated "
                               f"(wanted {need} bytes at offset {offset}, got {len(raw)})")
    return raw


def _external_int(v: str, key: str, name: str) -> int:
    # ONNX writes decimal integers; anything else ("-8", "1e12", "0x10", 5000 digits) is refused, not guessed at
    if not (isinstance(v, str) and 0 < len(v) <= 20 and v.isascii() and v.isdigit()):
        raise ModelFormatError(f"tensor {name!r}: external data {key} {v[:40]!r} is not a non-negative integer")
    return int(v)


def _data_bytes(t: onnx.TensorProto, name: str) -> int:
    """How many bytes ``t``'s raw data takes: its element count times the element size (sub-byte types packed)."""
    try:
        dt = DType(t.data_type)
    except ValueError:
        raise ModelFormatError(f"tensor {name!r}: unknown element type {t.data_type}") from None
    if dt in (DType.UNDEFINED, DType.STRING):
        raise ModelFormatError(f"tensor {name!r}: {dt.name} tensors cannot be stored as external data")
    if any(d < 0 for d in t.dims):
        raise ModelFormatError(f"tensor {name!r}: negative dimension in shape {list(t.dims)}")
    n = 1
    for d in t.dims:
        n *= d
    if dt.is_subbyte:
        bits = 2 if dt in (DType.UINT2, DType.INT2) else 4
        return (n * bits + 7) // 8
    return n * onnx.helper.tensor_dtype_to_np_dtype(int(dt)).itemsize
