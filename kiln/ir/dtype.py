"""Element types: ONNX's TensorProto codes, and how each is stored in torch and numpy.

Kiln keeps the ONNX element type on every Value. At run time a tensor lives in a torch dtype;
for the few types torch lacks (int4/uint4/int2/uint2, float4, float8 e8m0) the storage is a
wider torch dtype holding the same values, and the IR's DType says what they mean.
"""
from __future__ import annotations

import enum

import numpy as np
import torch


class DType(enum.IntEnum):
    """An element type, numbered as ONNX's TensorProto numbers them (DType.FLOAT == 1, DType.FLOAT16 == 10, ...).
    Types torch has no dtype for (the 4- and 2-bit types, float4, float8 e8m0) are stored in a wider torch dtype
    that holds the same values (see ``torch``)."""

    UNDEFINED = 0
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23
    FLOAT8E8M0 = 24
    UINT2 = 25
    INT2 = 26

    @property
    def short(self) -> str:
        """A short name for printing: "f32", "f16", "i64", "u8", ..."""
        return _SHORT.get(self, self.name.lower())

    @property
    def is_float(self) -> bool:
        """True for the floating-point types (float8 and float4 included)."""
        return self in _FLOATS

    @property
    def is_int(self) -> bool:
        """True for the integer types, signed and unsigned (bool excluded)."""
        return self in _INTS

    @property
    def is_subbyte(self) -> bool:
        """True for the types narrower than a byte (int4, uint4, int2, uint2, float4)."""
        return self in (DType.UINT4, DType.INT4, DType.UINT2, DType.INT2, DType.FLOAT4E2M1)

    @property
    def torch(self) -> torch.dtype:
        """The torch dtype a tensor of this type is stored in."""
        try:
            return _TORCH_STORAGE[self]
        except KeyError:
            raise TypeError(f"element type {self.name} has no torch storage") from None

    @property
    def itemsize(self) -> int:
        """Bytes per element as stored at run time."""
        return self.torch.itemsize

    @staticmethod
    def from_torch(dt: torch.dtype) -> "DType":
        """The element type of a torch dtype; raises TypeError for one ONNX has no type for."""
        try:
            return _FROM_TORCH[dt]
        except KeyError:
            raise TypeError(f"torch dtype {dt} has no ONNX element type") from None

    @staticmethod
    def from_numpy(dt) -> "DType":
        """The element type of a numpy dtype (or anything ``np.dtype`` accepts); raises TypeError when there is none."""
        dt = np.dtype(dt)
        name = dt.name
        if name in _FROM_NUMPY_NAME:
            return _FROM_NUMPY_NAME[name]
        raise TypeError(f"numpy dtype {dt} has no ONNX element type")


_SHORT = {
    DType.FLOAT: "f32", DType.DOUBLE: "f64", DType.FLOAT16: "f16", DType.BFLOAT16: "bf16",
    DType.INT8: "i8", DType.INT16: "i16", DType.INT32: "i32", DType.INT64: "i64",
    DType.UINT8: "u8", DType.UINT16: "u16", DType.UINT32: "u32", DType.UINT64: "u64",
    DType.BOOL: "bool", DType.STRING: "str", DType.COMPLEX64: "c64", DType.COMPLEX128: "c128",
    DType.FLOAT8E4M3FN: "f8e4m3fn", DType.FLOAT8E4M3FNUZ: "f8e4m3fnuz", DType.FLOAT8E5M2: "f8e5m2",
    DType.FLOAT8E5M2FNUZ: "f8e5m2fnuz", DType.UINT4: "u4", DType.INT4: "i4", DType.FLOAT4E2M1: "f4e2m1",
    DType.FLOAT8E8M0: "f8e8m0", DType.UINT2: "u2", DType.INT2: "i2",
}

_FLOATS = {
    DType.FLOAT, DType.DOUBLE, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ,
    DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ, DType.FLOAT4E2M1, DType.FLOAT8E8M0,
}
_INTS = {
    DType.INT8, DType.INT16, DType.INT32, DType.INT64, DType.UINT8, DType.UINT16, DType.UINT32, DType.UINT64,
    DType.UINT4, DType.INT4, DType.UINT2, DType.INT2,
}

_TORCH_STORAGE: dict[DType, torch.dtype] = {
    DType.FLOAT: torch.float32, DType.DOUBLE: torch.float64, DType.FLOAT16: torch.float16,
    DType.BFLOAT16: torch.bfloat16, DType.INT8: torch.int8, DType.INT16: torch.int16, DType.INT32: torch.int32,
    DType.INT64: torch.int64, DType.UINT8: torch.uint8, DType.UINT16: torch.uint16, DType.UINT32: torch.uint32,
    DType.UINT64: torch.uint64, DType.BOOL: torch.bool, DType.COMPLEX64: torch.complex64,
    DType.COMPLEX128: torch.complex128,
    DType.FLOAT8E4M3FN: torch.float8_e4m3fn, DType.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    DType.FLOAT8E5M2: torch.float8_e5m2, DType.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
    # Types torch cannot hold natively: stored widened, values kept in range by the kernels.
    DType.INT4: torch.int8, DType.UINT4: torch.uint8, DType.INT2: torch.int8, DType.UINT2: torch.uint8,
    DType.FLOAT4E2M1: torch.float32, DType.FLOAT8E8M0: torch.float32,
}
if hasattr(torch, "float8_e8m0fnu"):
    _TORCH_STORAGE[DType.FLOAT8E8M0] = torch.float8_e8m0fnu

_NATIVE = (
    DType.FLOAT, DType.DOUBLE, DType.FLOAT16, DType.BFLOAT16, DType.INT8, DType.INT16, DType.INT32, DType.INT64,
    DType.UINT8, DType.UINT16, DType.UINT32, DType.UINT64, DType.BOOL, DType.COMPLEX64, DType.COMPLEX128,
    DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ,
)
_FROM_TORCH: dict[torch.dtype, DType] = {_TORCH_STORAGE[d]: d for d in _NATIVE}
if hasattr(torch, "float8_e8m0fnu"):
    _FROM_TORCH[torch.float8_e8m0fnu] = DType.FLOAT8E8M0

_FROM_NUMPY_NAME = {
    "float32": DType.FLOAT, "float64": DType.DOUBLE, "float16": DType.FLOAT16, "bfloat16": DType.BFLOAT16,
    "int8": DType.INT8, "int16": DType.INT16, "int32": DType.INT32, "int64": DType.INT64, "uint8": DType.UINT8,
    "uint16": DType.UINT16, "uint32": DType.UINT32, "uint64": DType.UINT64, "bool": DType.BOOL,
    "complex64": DType.COMPLEX64, "complex128": DType.COMPLEX128, "object": DType.STRING, "str": DType.STRING,
    "float8_e4m3fn": DType.FLOAT8E4M3FN, "float8_e4m3fnuz": DType.FLOAT8E4M3FNUZ, "float8_e5m2": DType.FLOAT8E5M2,
    "float8_e5m2fnuz": DType.FLOAT8E5M2FNUZ, "int4": DType.INT4, "uint4": DType.UINT4, "int2": DType.INT2,
    "uint2": DType.UINT2, "float4_e2m1fn": DType.FLOAT4E2M1, "float8_e8m0fnu": DType.FLOAT8E8M0,
}
