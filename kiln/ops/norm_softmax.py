"""Softmax, LogSoftmax and Hardmax (registered by kiln.ops.norm).

Up to opset 12 these ops coerce the input to 2-D at ``axis`` (default 1) and normalize each row of
[prod(shape[:axis]), prod(shape[axis:])]; from opset 13 they work along the one dim ``axis``
(default -1).
"""
from __future__ import annotations

import math

import torch


def _along_axis(ctx, x: torch.Tensor, attrs: dict, fn) -> torch.Tensor:
    if x.dim() == 0:
        return fn(x.reshape(1), 0).reshape(())
    if ctx.opset >= 13:
        return fn(x, attrs.get("axis", -1) % x.dim())
    axis = attrs.get("axis", 1) % x.dim()
    rows, cols = math.prod(x.shape[:axis]), math.prod(x.shape[axis:])
    return fn(x.reshape(rows, cols), 1).reshape(x.shape)


def _hardmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.numel() == 0:
        return torch.zeros_like(x)
    # argmax picks the first of equal maxima, as ONNX asks
    first = torch.argmax(x, dim=dim, keepdim=True)
    return torch.zeros_like(x).scatter(dim, first, 1)


def _softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.dtype in (torch.float16, torch.bfloat16):
        # ONNX defines Softmax as Exp(x - ReduceMax(x)) / ReduceSum(...), each step rounded to x's
        # type; torch's fused kernel rounds once, which moves fp16 results by an ulp from the suite's
        shifted = torch.exp(x - x.amax(dim, keepdim=True))
        return shifted / shifted.sum(dim, keepdim=True, dtype=x.dtype)
    return torch.softmax(x, dim)


def softmax(ctx, inputs, attrs):
    """Softmax: exp(x) / sum(exp(x)) along axis (2-D coercion before opset 13)."""
    return _along_axis(ctx, inputs[0], attrs, _softmax)


def log_softmax(ctx, inputs, attrs):
    """LogSoftmax: x - log(sum(exp(x))) along axis (2-D coercion before opset 13)."""
    return _along_axis(ctx, inputs[0], attrs, lambda t, d: torch.log_softmax(t, d))


def hardmax(ctx, inputs, attrs):
    """Hardmax: 1 at the first maximum along axis, 0 elsewhere (2-D coercion before opset 13)."""
    return _along_axis(ctx, inputs[0], attrs, _hardmax)
