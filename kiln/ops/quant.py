"""Ops of the 'quant' family: linear (de)quantization, and integer / quantized matmul and conv.

Quantized types follow Kiln's storage rules: int4/uint4/int2/uint2 values live in int8/uint8 and
float4e2m1 in float32, so the ONNX type of a result comes from the IR where storage cannot tell.
"""
from __future__ import annotations

import torch

from ..ir.dtype import DType
from .cast_formats import FLOAT8, FORMATS, round_to_format
from .quant_integer import conv_integer, matmul_integer, qlinear_conv, qlinear_matmul
from .registry import KernelContext, OpSet

ops = OpSet("quant")
ops.add("MatMulInteger", matmul_integer)
ops.add("ConvInteger", conv_integer)
ops.add("QLinearMatMul", qlinear_matmul)
ops.add("QLinearConv", qlinear_conv)

INT_RANGES = {
    DType.UINT8: (0, 255), DType.INT8: (-128, 127), DType.UINT16: (0, 65535), DType.INT16: (-32768, 32767),
    DType.UINT4: (0, 15), DType.INT4: (-8, 7), DType.UINT2: (0, 3), DType.INT2: (-2, 1),
}


def expand_param(p: torch.Tensor, shape: torch.Size, axis: int, block_size: int) -> torch.Tensor:
    """Make a scale / zero point broadcastable against an input of ``shape``.

    Scalars (or one-element tensors) are per tensor, 1-D without a block size is per ``axis``, and a
    blocked parameter repeats each entry ``block_size`` times along ``axis`` (the last block may be short).
    """
    if p.numel() == 1:
        return p.reshape(())
    if not block_size:
        if p.dim() != 1:
            raise ValueError(f"per-axis scale must be 1-D, got shape {list(p.shape)}")
        dims = [1] * len(shape)
        dims[axis] = p.numel()
        return p.reshape(dims)
    if p.dim() != len(shape):
        raise ValueError(f"blocked scale must have the input's rank {len(shape)}, got shape {list(p.shape)}")
    p = torch.repeat_interleave(p, block_size, dim=axis)
    return p.narrow(axis, 0, shape[axis])


def _quant_dtype(ctx: KernelContext, attrs: dict, zero_point: torch.Tensor | None) -> DType:
    known = ctx.output_dtype(0)
    if known is not None:
        return known
    if attrs.get("output_dtype"):
        return DType(attrs["output_dtype"])
    if zero_point is None:
        return DType.UINT8
    # Storage fallback when the IR has no type: float32 can only hold float4e2m1 here.
    return DType.FLOAT4E2M1 if zero_point.dtype == torch.float32 else DType.from_torch(zero_point.dtype)


@ops.op("QuantizeLinear")
def quantize_linear(ctx: KernelContext, inputs: list, attrs: dict):
    """y = saturate(round_half_even(x / y_scale) + y_zero_point), per tensor, per axis or blocked."""
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    axis = attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    block = attrs.get("block_size", 0)
    dst = _quant_dtype(ctx, attrs, zp)

    scale = expand_param(scale, x.shape, axis, block)
    if attrs.get("precision"):
        compute = DType(attrs["precision"]).torch
    else:
        compute = torch.promote_types(x.dtype, scale.dtype)
    q = x.to(compute) / scale.to(compute)

    if dst in INT_RANGES:
        lo, hi = INT_RANGES[dst]
        v = torch.round(q).to(torch.float64)
        if zp is not None:
            v = v + expand_param(zp, x.shape, axis, block).to(torch.float64)
        # NaN goes to the low end, as in ONNX's reference.
        v = torch.nan_to_num(v, nan=float(lo), posinf=float(hi), neginf=float(lo))
        return torch.clamp(v, lo, hi).to(dst.torch)
    if dst in FLOAT8:
        # A float8 zero point must be 0 and is not added.
        return round_to_format(q, FORMATS[dst], bool(attrs.get("saturate", 1))).to(dst.torch)
    if dst == DType.FLOAT4E2M1:
        if zp is not None:
            q = q + expand_param(zp, x.shape, axis, block).to(q.dtype)
        return round_to_format(q, FORMATS[dst], True).to(dst.torch)
    raise NotImplementedError(f"QuantizeLinear: {dst.name} is not a quantized type")


@ops.op("DequantizeLinear")
def dequantize_linear(ctx: KernelContext, inputs: list, attrs: dict):
    """y = (x - x_zero_point) * x_scale, per tensor, per axis or blocked."""
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    axis = attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    block = attrs.get("block_size", 0)
    dst = ctx.output_dtype(0) or (DType(attrs["output_dtype"]) if attrs.get("output_dtype")
                                  else DType.from_torch(scale.dtype))
    # Like ONNX's reference: float32 arithmetic unless double is involved.
    compute = torch.float64 if torch.float64 in (scale.dtype, dst.torch) else torch.float32
    dx = x.to(compute)
    # Zero points of float (float8 / float4) inputs must be 0; integer ones are subtracted.
    if zp is not None and not x.dtype.is_floating_point:
        dx = dx - expand_param(zp, x.shape, axis, block).to(compute)
    y = dx * expand_param(scale, x.shape, axis, block).to(compute)
    return y.to(dst.torch)


@ops.op("DynamicQuantizeLinear")
def dynamic_quantize_linear(ctx: KernelContext, inputs: list, attrs: dict):
    """uint8 quantization with scale and zero point taken from the range of x (widened to include 0)."""
    x = inputs[0].to(torch.float32)
    zero = x.new_zeros(())
    hi = torch.maximum(zero, x.max()) if x.numel() else zero
    lo = torch.minimum(zero, x.min()) if x.numel() else zero
    span = torch.where(hi == lo, torch.ones_like(hi), hi - lo)
    scale = span / 255.0
    zp = torch.round(torch.clamp(-lo / scale, 0.0, 255.0))
    y = torch.clamp(torch.round(x / scale) + zp, 0.0, 255.0)
    return y.to(torch.uint8), scale.to(inputs[0].dtype), zp.to(torch.uint8)
