"""Ops that make tensors from shapes and patterns: ConstantOfShape, EyeLike, Range, Trilu
(part of the 'shape' family's OpSet)."""
from __future__ import annotations

import math

import torch

from ..ir.dtype import DType
from .registry import OpSet
from .shape_util import bits, ints, scalar, unbits

ops = OpSet("shape")


@ops.op("ConstantOfShape", host_inputs=(0,))
def constant_of_shape(ctx, inputs, attrs):
    """Fills the shape given by input 1 with the one-element ``value`` attribute (float 0 by default)."""
    shape = ints(inputs[0])
    value = attrs.get("value")
    if value is None:
        value = torch.zeros((), dtype=torch.float32)
    value = value.reshape(())
    if value.device != ctx.device and value.device.type == "cpu" and value.dtype in _FILLABLE:
        # Filled on the device from the host number: copying the one-element host tensor there would be a
        # pageable copy, which CUDA graph capture refuses (silero-vad's If bodies pad with this op).
        return torch.full(shape, value.item(), dtype=value.dtype, device=ctx.device)
    value = value.to(ctx.device)
    return unbits(bits(value).expand(shape).clone(), value.dtype)


_FILLABLE = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16,
                       torch.int32, torch.int64, torch.uint8, torch.bool})


@ops.op("EyeLike", host_inputs=(0,))
def eye_like(ctx, inputs, attrs):
    """Ones on diagonal ``k`` of a 2-D tensor shaped like the input; ``dtype`` defaults to the input's."""
    x = inputs[0]
    out = ctx.output_dtype(0)
    if out is not None:
        dtype = out.torch
    elif attrs.get("dtype") is not None:
        dtype = DType(attrs["dtype"]).torch
    else:
        dtype = x.dtype
    n, m = x.shape
    rows = torch.arange(n, device=x.device).unsqueeze(1)
    cols = torch.arange(m, device=x.device).unsqueeze(0)
    return (cols - rows == attrs.get("k", 0)).to(dtype)


@ops.op("Range", host_inputs=(0, 1, 2))
def range_(ctx, inputs, attrs):
    """``start + i * delta`` for i < max(ceil((limit - start) / delta), 0). Integers are exact; floats are
    computed in double, or for float16/bfloat16 in the ``stash_type`` (opset 27+, float by default)."""
    start, limit, delta = (scalar(t) for t in inputs[:3])
    dtype = inputs[0].dtype
    device = ctx.device  # start/limit/delta may be host values on a GPU engine; the range is device data
    if not dtype.is_floating_point:
        start, limit, delta = int(start), int(limit), int(delta)
        n = max(0, -((start - limit) // delta))
        return (torch.arange(n, dtype=torch.int64, device=device) * delta + start).to(dtype)
    if delta == 0:
        raise ValueError("Range: delta must not be 0")
    n = max(0, math.ceil((limit - start) / delta))
    compute = torch.float64
    if ctx.opset >= 27 and dtype in (torch.float16, torch.bfloat16):
        compute = DType(attrs.get("stash_type", 1)).torch
        start, delta = (torch.tensor(v, dtype=dtype).to(compute).item() for v in (start, delta))
    return (torch.arange(n, dtype=compute, device=device) * delta + start).to(dtype)


@ops.op("Trilu", host_inputs=(1,))
def trilu(ctx, inputs, attrs):
    """Keeps the upper (``upper``=1, default) or lower triangle of the last two dims, shifted by the
    optional diagonal offset ``k`` (input 2); the rest becomes zero."""
    x = inputs[0]
    k_in = inputs[1] if len(inputs) > 1 else None
    # An unknown (meta) k during shape inference: the output shape does not depend on it.
    k = int(scalar(None if k_in is None or k_in.is_meta else k_in, 0))
    n, m = x.shape[-2:]
    ones = torch.ones(n, m, dtype=torch.bool, device=x.device)
    keep = ones.triu(k) if attrs.get("upper", 1) else ones.tril(k)
    y = bits(x)
    return unbits(torch.where(keep, y, torch.zeros((), dtype=y.dtype, device=x.device)), x.dtype)
