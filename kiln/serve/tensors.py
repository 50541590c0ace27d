"""Tensors on the wire: the KServe v2 datatype names, and numpy arrays to and from JSON lists and raw bytes.

Raw bytes are little-endian and row-major, as the v2 protocol's binary-data extension and gRPC's
``raw_input_contents`` carry them. BYTES (strings) is not served: no Kiln engine takes string tensors.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from ..errors import RequestError
from ..ir.dtype import DType

# v2 datatype name <-> Kiln element type <-> numpy dtype (little-endian).
_TABLE = [
    ("BOOL", DType.BOOL, np.dtype(np.bool_)),
    ("UINT8", DType.UINT8, np.dtype("<u1")),
    ("UINT16", DType.UINT16, np.dtype("<u2")),
    ("UINT32", DType.UINT32, np.dtype("<u4")),
    ("UINT64", DType.UINT64, np.dtype("<u8")),
    ("INT8", DType.INT8, np.dtype("<i1")),
    ("INT16", DType.INT16, np.dtype("<i2")),
    ("INT32", DType.INT32, np.dtype("<i4")),
    ("INT64", DType.INT64, np.dtype("<i8")),
    ("FP16", DType.FLOAT16, np.dtype("<f2")),
    ("FP32", DType.FLOAT, np.dtype("<f4")),
    ("FP64", DType.DOUBLE, np.dtype("<f8")),
    ("BF16", DType.BFLOAT16, np.dtype(ml_dtypes.bfloat16)),
]
_BY_NAME = {name: np_dtype for name, _, np_dtype in _TABLE}
_NAME_OF_DTYPE = {dtype: name for name, dtype, _ in _TABLE}


def datatype_of(dtype: DType | None) -> str:
    """The v2 datatype name of a Kiln element type (what model metadata reports)."""
    if dtype not in _NAME_OF_DTYPE:
        return "BYTES" if dtype is DType.STRING else f"UNSUPPORTED({getattr(dtype, 'name', dtype)})"
    return _NAME_OF_DTYPE[dtype]


def numpy_dtype(datatype: str, name: str) -> np.dtype:
    try:
        return _BY_NAME[datatype]
    except KeyError:
        known = ", ".join(_BY_NAME)
        raise RequestError(f"input {name!r}: datatype {datatype!r} is not served (one of {known})") from None


def checked_shape(shape, name: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise RequestError(f"input {name!r}: shape must be a list of integers, got {shape!r}") from None
    if any(d < 0 for d in dims):
        raise RequestError(f"input {name!r}: shape {list(dims)} has a negative dimension")
    return dims


def from_json(name: str, datatype: str, shape, data) -> np.ndarray:
    """An input given as JSON numbers (a flat list in row-major order, or nested lists)."""
    dims = checked_shape(shape, name)
    dtype = numpy_dtype(datatype, name)
    try:
        values = np.asarray(data, dtype=np.float64 if dtype == np.dtype(ml_dtypes.bfloat16) else dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise RequestError(f"input {name!r}: 'data' cannot be read as {datatype}: {e}") from None
    if values.size != math.prod(dims):
        raise RequestError(f"input {name!r}: shape {list(dims)} needs {math.prod(dims)} values, "
                           f"'data' has {values.size}")
    return values.astype(dtype, copy=False).reshape(dims)


def from_bytes(name: str, datatype: str, shape, raw: bytes | memoryview) -> np.ndarray:
    """An input given as raw little-endian bytes (binary-data extension, gRPC raw_input_contents)."""
    dims = checked_shape(shape, name)
    dtype = numpy_dtype(datatype, name)
    want = math.prod(dims) * dtype.itemsize
    if len(raw) != want:
        raise RequestError(f"input {name!r}: shape {list(dims)} of {datatype} needs {want} bytes, got {len(raw)}")
    # A copy: the request's buffer is read-only, and batching concatenates anyway.
    return np.frombuffer(raw, dtype=dtype).reshape(dims).copy()


def to_json(array: np.ndarray) -> list:
    """A flat row-major list, as the v2 protocol's JSON tensors carry them."""
    if array.dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
        array = array.astype(np.float32)
    return array.reshape(-1).tolist()


def to_bytes(array: np.ndarray) -> bytes:
    if array.dtype.byteorder == ">":  # engines answer in native (little-endian) order; be sure anyway
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


def datatype_of_array(array: np.ndarray) -> str:
    for name, _, dtype in _TABLE:
        if array.dtype == dtype:
            return name
    raise RequestError(f"an output of dtype {array.dtype} has no v2 datatype")
