"""kiln.trt's logger and data types (TensorRT 10's ILogger, Logger, DataType, Dims), shared by the package's
modules so that none of them imports the package's __init__."""
from __future__ import annotations

import enum
import math
from typing import Iterable

import numpy as np

from ..ir.dtype import DType

# --- logging ------------------------------------------------------------------------------------
class ILogger:
    """The interface kiln.trt reports through: subclass it and implement ``log``. Severities, most severe first:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE (also ``ILogger.Severity``)."""

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    def log(self, severity, msg: str) -> None:  # pragma: no cover - interface
        """Receive one message of the given severity; called by the builder, parser and runtime."""
        raise NotImplementedError


class Logger(ILogger):
    """An ILogger that prints each message of ``min_severity`` (WARNING by default) or more severe to stdout."""

    def __init__(self, min_severity=ILogger.Severity.WARNING):
        self.min_severity = ILogger.Severity(min_severity)

    def log(self, severity, msg: str) -> None:
        """Print ``msg`` as ``[kiln.trt] [W] msg`` when ``severity`` is at least as severe as ``min_severity``."""
        if ILogger.Severity(severity) <= self.min_severity:
            print(f"[kiln.trt] [{ILogger.Severity(severity).name[0]}] {msg}")


# --- data types -----------------------------------------------------------------------------------
# Enum names and values as in TensorRT 10's headers (NvInferRuntimeBase.h, NvInfer.h, NvInferRuntime.h of
# NVIDIA/TensorRT v10.16), so code that stores or compares flag values keeps working; tests/engine/test_trt_api.py
# pins them.
class DataType(enum.IntEnum):
    """Element types of tensors, with TensorRT 10's values (HALF is float16, FP8 is float8 e4m3, BF16 bfloat16).

    Kiln: an engine tensor of a type not listed here is reported as FLOAT; FP4 and E8M0 have no Kiln element type,
    so network inputs and casts refuse them.
    """

    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10
    E8M0 = 11


float32, float16, int8, int32 = DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32
bool, uint8, fp8, bfloat16, int64 = DataType.BOOL, DataType.UINT8, DataType.FP8, DataType.BF16, DataType.INT64  # noqa: A001

_TO_TRT = {DType.FLOAT: DataType.FLOAT, DType.FLOAT16: DataType.HALF, DType.INT8: DataType.INT8,
           DType.INT32: DataType.INT32, DType.BOOL: DataType.BOOL, DType.UINT8: DataType.UINT8,
           DType.FLOAT8E4M3FN: DataType.FP8, DType.BFLOAT16: DataType.BF16, DType.INT64: DataType.INT64,
           DType.INT4: DataType.INT4}
_TO_KILN = {v: k for k, v in _TO_TRT.items()}
_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}


def nptype(dtype: DataType):
    """The numpy type of a TensorRT DataType."""
    if dtype not in _NP:
        raise TypeError(f"{DataType(dtype).name} has no numpy type")
    return _NP[dtype]


def volume(shape: Iterable[int]) -> int:
    """The number of elements of a tensor of ``shape``: the product of its dimensions (1 for an empty shape)."""
    return math.prod(shape)


class Dims(tuple):
    """A shape; -1 marks a dimension fixed only at run time."""

    @property
    def nbDims(self) -> int:  # noqa: N802 - TensorRT's name
        """The number of dimensions."""
        return len(self)


class _DimsN(Dims):
    """TensorRT's fixed-rank Dims constructors: ``Dims2(m, k)``, ``DimsHW(h, w)``, ``Dims4(n, c, h, w)``."""

    def __new__(cls, *dims):
        if len(dims) == 1 and not isinstance(dims[0], int):
            dims = tuple(dims[0])
        return super().__new__(cls, (int(d) for d in dims))


class Dims2(_DimsN):
    """A two-dimensional shape: ``Dims2(m, k)`` or ``Dims2((m, k))``."""

    pass


class DimsHW(_DimsN):
    """A two-dimensional height-by-width shape (kernel sizes, strides, padding): ``DimsHW(h, w)``."""

    pass


class Dims3(_DimsN):
    """A three-dimensional shape: ``Dims3(c, h, w)``."""

    pass


class Dims4(_DimsN):
    """A four-dimensional shape: ``Dims4(n, c, h, w)``."""

    pass


class Weights:
    """TensorRT's Weights: ``Weights(array)``, ``Weights(dtype)`` (empty) or ``Weights(dtype, address, count)``
    (copied from host memory now, as the Python API keeps no reference to it)."""

    def __init__(self, a=None, address: int | None = None, count: int | None = None):
        if isinstance(a, DataType):
            dt = np.dtype(nptype(a))
            if address is None or not count:
                self.array = np.zeros((0,), dt)
            else:
                import ctypes
                raw = (ctypes.c_byte * (int(count) * dt.itemsize)).from_address(int(address))
                self.array = np.frombuffer(raw, dt).copy()
        else:
            self.array = np.ascontiguousarray(np.asarray(a))

    @property
    def size(self) -> int:
        """The number of elements."""
        return int(self.array.size)

    @property
    def dtype(self) -> DataType:
        """The DataType of the elements (FLOAT for a numpy type TensorRT has no name for)."""
        return _FROM_NP.get(self.array.dtype.type, DataType.FLOAT)

    def numpy(self) -> np.ndarray:
        """The values as a numpy array (not a copy)."""
        return self.array


_FROM_NP = {v: k for k, v in _NP.items()}
