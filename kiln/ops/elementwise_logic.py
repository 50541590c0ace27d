"""Comparison, boolean logic and bitwise ops of the 'elementwise' family (merged into its OpSet)."""
from __future__ import annotations

import torch

from .elementwise_broadcast import binary_args
from .elementwise_int import as_signed_bits, narrow, ordered, shift
from .registry import OpSet

ops = OpSet("elementwise")


def _compare(fn):
    def kernel(ctx, inputs, attrs):
        a, b = binary_args(ctx, attrs, inputs)
        return fn(ordered(a), ordered(b))
    kernel.__doc__ = f"Elementwise {fn.__name__} with numpy broadcasting; uint64 compared as unsigned."
    return kernel


ops.add("Equal", _compare(torch.eq), elementwise=True, broadcasting=True, host=True)
ops.add("Greater", _compare(torch.gt), elementwise=True, broadcasting=True, host=True)
ops.add("Less", _compare(torch.lt), elementwise=True, broadcasting=True, host=True)
ops.add("GreaterOrEqual", _compare(torch.ge), elementwise=True, broadcasting=True, host=True)
ops.add("LessOrEqual", _compare(torch.le), elementwise=True, broadcasting=True, host=True)


def _logical(fn):
    def kernel(ctx, inputs, attrs):
        a, b = binary_args(ctx, attrs, inputs)
        return fn(a, b)
    kernel.__doc__ = f"Boolean {fn.__name__} with numpy broadcasting."
    return kernel


ops.add("And", _logical(torch.logical_and), elementwise=True, broadcasting=True, host=True)
ops.add("Or", _logical(torch.logical_or), elementwise=True, broadcasting=True, host=True)
ops.add("Xor", _logical(torch.logical_xor), elementwise=True, broadcasting=True)


@ops.op("Not", elementwise=True, host=True)
def not_(ctx, inputs, attrs):
    return torch.logical_not(inputs[0])


def _bitwise(fn):
    def kernel(ctx, inputs, attrs):
        a, b = binary_args(ctx, attrs, inputs)
        return narrow(fn(as_signed_bits(a), as_signed_bits(b)), a.dtype)
    kernel.__doc__ = f"Integer {fn.__name__} with numpy broadcasting."
    return kernel


ops.add("BitwiseAnd", _bitwise(torch.bitwise_and), elementwise=True)
ops.add("BitwiseOr", _bitwise(torch.bitwise_or), elementwise=True)
ops.add("BitwiseXor", _bitwise(torch.bitwise_xor), elementwise=True)


@ops.op("BitwiseNot", elementwise=True)
def bitwise_not(ctx, inputs, attrs):
    x = inputs[0]
    return narrow(torch.bitwise_not(as_signed_bits(x)), x.dtype)


@ops.op("BitShift", elementwise=True, broadcasting=True)
def bitshift(ctx, inputs, attrs):
    """Shift X by Y bits (direction LEFT/RIGHT); right shifts of signed types are arithmetic."""
    direction = attrs.get("direction", "")
    if direction not in ("LEFT", "RIGHT"):
        raise ValueError(f"BitShift direction must be 'LEFT' or 'RIGHT', got {direction!r}")
    return shift(*binary_args(ctx, attrs, inputs), direction == "LEFT")
