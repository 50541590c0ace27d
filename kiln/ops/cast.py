"""Ops of the 'cast' family: Cast, CastLike (value conversion) and BitCast (bit reinterpretation)."""
from __future__ import annotations

import torch

from ..ir.dtype import DType
from .cast_formats import FLOAT4_VALUES, SUBBYTE_INTS, convert
from .registry import KernelContext, OpSet

ops = OpSet("cast")


@ops.op("Cast", elementwise=True, host=True)
def cast(ctx: KernelContext, inputs: list, attrs: dict):
    """Convert element values to type ``to``; ``saturate`` (opset 19+) and ``round_mode`` (24+) shape float8."""
    x = inputs[0]
    return _fresh(convert(x, DType(attrs["to"]), bool(attrs.get("saturate", 1)), attrs.get("round_mode", "up")), x)


@ops.op("CastLike")
def cast_like(ctx: KernelContext, inputs: list, attrs: dict):
    """Cast to the element type of the second input."""
    x, like = inputs
    # The IR knows the real type; storage alone cannot tell int4 from int8 or float4 from float.
    dst = ctx.output_dtype(0) or DType.from_torch(like.dtype)
    return _fresh(convert(x, dst, bool(attrs.get("saturate", 1)), attrs.get("round_mode", "up")), x)


def _fresh(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y``, copied when it is ``x`` itself (a cast to the type it has): Cast is not a view (registry.py's
    kernel contract), so its output must not share its input's storage."""
    return y.clone() if y is x else y


# Bit-level helpers for the types Kiln stores widened (their storage bits are not their ONNX bits).
_STORAGE_OK = {d.torch for d in DType if d not in (DType.UNDEFINED, DType.STRING)}


def _float4_code(x: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(FLOAT4_VALUES[1:], dtype=x.dtype, device=x.device)
    magnitude = torch.bucketize(x.abs(), table, right=True)
    return magnitude + torch.signbit(x).to(torch.int64) * 8


def _float4_from_code(code: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(FLOAT4_VALUES, dtype=torch.float32, device=code.device)
    v = table[code & 7]
    return torch.where((code & 8) != 0, -v, v)


def _narrow_code(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The raw bits of a sub-byte value, as int64 in [0, 2**bits)."""
    if x.dtype.is_floating_point:
        return _float4_code(x)
    return x.to(torch.int64) & ((1 << bits) - 1)


def _from_code(code: torch.Tensor, dst: DType) -> torch.Tensor:
    if dst == DType.FLOAT4E2M1:
        return _float4_from_code(code)
    bits, signed = SUBBYTE_INTS[dst]
    v = code - ((code >> (bits - 1)) << bits) if signed else code
    return v.to(dst.torch)


@ops.op("BitCast")
def bit_cast(ctx: KernelContext, inputs: list, attrs: dict):
    """Reinterpret the bits of each element as type ``to`` (same bit width)."""
    x = inputs[0]
    dst = DType(attrs["to"])
    if dst == DType.STRING or x.dtype not in _STORAGE_OK:
        raise NotImplementedError("BitCast: string tensors are not supported")
    if dst.is_subbyte:
        return _from_code(_narrow_code(x, 2 if dst in (DType.INT2, DType.UINT2) else 4), dst)
    if dst == DType.BOOL:
        return x.view(torch.uint8) != 0 if x.dtype != torch.bool else x
    if x.dtype == torch.bool:
        x = x.view(torch.uint8)
    if x.dtype.itemsize != dst.torch.itemsize:
        raise ValueError(f"BitCast: {x.dtype} and {dst.name} differ in bit width")
    return x.view(dst.torch)

