"""Value conversion between ONNX element types, matching ONNX's reference semantics bit for bit.

torch's own casts disagree with ONNX at the edges (torch saturates inf into float8e4m3fn, rounds
double -> half twice, narrows float -> int8 with platform-dependent results), so narrow float
targets are rounded here explicitly and integer targets go through int64 and wrap, like numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir.dtype import DType


@dataclass(frozen=True)
class FloatFormat:
    mbits: int           # stored mantissa bits
    min_exp: int         # exponent of the smallest normal number
    max: float           # largest finite value
    has_inf: bool        # overflow without saturation gives +-inf (else NaN)
    has_nan: bool = True
    unsigned_zero: bool = False  # the "fnuz" types have no -0 (its encoding is NaN)


FORMATS = {
    DType.FLOAT16: FloatFormat(10, -14, 65504.0, True),
    DType.BFLOAT16: FloatFormat(7, -126, 3.3895313892515355e38, True),
    DType.FLOAT8E4M3FN: FloatFormat(3, -6, 448.0, False),
    DType.FLOAT8E4M3FNUZ: FloatFormat(3, -7, 240.0, False, unsigned_zero=True),
    DType.FLOAT8E5M2: FloatFormat(2, -14, 57344.0, True),
    DType.FLOAT8E5M2FNUZ: FloatFormat(2, -15, 57344.0, False, unsigned_zero=True),
    DType.FLOAT4E2M1: FloatFormat(1, 0, 6.0, False, has_nan=False),
}
FLOAT8 = (DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ)

# Integer types Kiln stores widened: (bits, signed).
SUBBYTE_INTS = {DType.INT4: (4, True), DType.UINT4: (4, False), DType.INT2: (2, True), DType.UINT2: (2, False)}

FLOAT4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _is_float(t: torch.Tensor) -> bool:
    return t.dtype.is_floating_point


def round_to_format(x: torch.Tensor, fmt: FloatFormat, saturate: bool) -> torch.Tensor:
    """Round to nearest-even into ``fmt`` (subnormals included); float64 result holding exact values."""
    x = x.to(torch.float64)
    ax = x.abs()
    _, e = torch.frexp(ax)
    lead = torch.clamp(e.to(torch.int64) - 1, min=fmt.min_exp)
    # The spacing of representable values around |x|, built from bits so it is an exact power of two.
    quantum = ((lead - fmt.mbits + 1023) << 52).view(torch.float64)
    r = torch.copysign(torch.round(ax / quantum) * quantum, x)
    if saturate or not fmt.has_nan:
        r = torch.clamp(r, -fmt.max, fmt.max)
    else:
        overflow = torch.full_like(r, float("inf") if fmt.has_inf else float("nan"))
        r = torch.where(r.abs() > fmt.max, torch.copysign(overflow, r), r)
    if not fmt.has_nan:
        # float4e2m1 has no NaN; ONNX's reference (ml_dtypes) turns NaN into a zero of the opposite sign.
        zero = torch.where(torch.signbit(x), 0.0, -0.0).to(r.dtype)
        r = torch.where(torch.isnan(x), zero, r)
    if fmt.unsigned_zero:
        r = r + 0.0
    return r


def to_e8m0(x: torch.Tensor, saturate: bool, round_mode: str) -> torch.Tensor:
    """float8e8m0 (a bare exponent) from float32 bits; the sign is ignored, like ONNX's reference."""
    bits = x.to(torch.float32).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    exp = (bits >> 23) & 0xFF
    special = exp == 0xFF
    if round_mode == "up":
        up = (bits & 0x7FFFFF) != 0
    elif round_mode == "nearest":
        # Ties round up: the half bit decides, except below the normals where an exact half rounds down.
        up = ((bits & 0x400000) != 0) & (((bits & 0x3FFFFF) != 0) | (exp > 0))
    elif round_mode == "down":
        up = torch.zeros_like(special)
    else:
        raise ValueError(f"Cast: unknown round_mode {round_mode!r}")
    up = up & ~special
    if saturate:
        up = up & (exp != 0xFE)
    out = torch.where(special, 0xFF, exp + up.to(torch.int64))
    return out.to(torch.uint8).view(DType.FLOAT8E8M0.torch)


def _to_int64(x: torch.Tensor) -> torch.Tensor:
    """Integer value of x truncated toward zero, as int64 (floats above 2^63 wrap, as uint64 needs)."""
    if x.dtype == torch.bool or not _is_float(x):
        return x.to(torch.int64)
    x = x.to(torch.float64)
    x = torch.where(x >= 2.0**63, x - 2.0**64, x)
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).to(torch.int64)


def wrap_subbyte(v: torch.Tensor, dst: DType) -> torch.Tensor:
    """Keep the low bits of integer v, read as the sub-byte type dst (two's complement if signed)."""
    bits, signed = SUBBYTE_INTS[dst]
    mask = (1 << bits) - 1
    v = v.to(torch.int64)
    v = ((v + (1 << (bits - 1))) & mask) - (1 << (bits - 1)) if signed else v & mask
    return v.to(dst.torch)


def float_to_subbyte(x: torch.Tensor, dst: DType) -> torch.Tensor:
    """Float -> int4/uint4/int2/uint2: truncate toward zero; a value outside the type's range, NaN or
    Inf gives 0.

    ONNX leaves float -> fixed-point overflow undefined; the node suite's expected data (onnx 1.23)
    fixes it to 0, so Kiln writes that rule down here instead of inheriting whatever the installed
    ml_dtypes does (its 0.7 release changed it from wrapping to 0).
    """
    bits, signed = SUBBYTE_INTS[dst]
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    t = torch.trunc(x.to(torch.float64))
    inside = (t >= lo) & (t <= hi)  # False for NaN too
    return torch.where(inside, t, 0.0).to(torch.int64).to(dst.torch)


def _as_computable(x: torch.Tensor) -> torch.Tensor:
    """Widen float8 / e8m0 storage, which torch can hardly compute with, to float32 (exactly)."""
    if x.dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz) or \
            x.dtype == DType.FLOAT8E8M0.torch:
        return x.to(torch.float32)
    return x


def convert(x: torch.Tensor, dst: DType, saturate: bool = True, round_mode: str = "up") -> torch.Tensor:
    """Cast the values of x (any Kiln storage) to the ONNX element type dst, in dst's storage."""
    if dst == DType.STRING:
        raise NotImplementedError("string tensors are not supported")
    x = _as_computable(x)
    target = dst.torch
    if dst == DType.BOOL:
        return x != 0
    if dst == DType.FLOAT8E8M0:
        return to_e8m0(x, saturate, round_mode)
    if dst in SUBBYTE_INTS:
        return float_to_subbyte(x, dst) if _is_float(x) else wrap_subbyte(_to_int64(x), dst)
    if dst.is_int:
        return _to_int64(x).to(target) if _is_float(x) else x.to(target)
    if dst in FLOAT8 or dst == DType.FLOAT4E2M1:
        sat = saturate or dst == DType.FLOAT4E2M1
        return round_to_format(x, FORMATS[dst], sat).to(target)
    if dst == DType.FLOAT16 and x.dtype == torch.float64:
        # torch narrows double -> half through float32, rounding twice; ONNX (numpy) rounds once.
        # (double -> bfloat16 goes through float32 in ONNX's reference too, as in torch.)
        return round_to_format(x, FORMATS[dst], False).to(target)
    return x.to(target)
