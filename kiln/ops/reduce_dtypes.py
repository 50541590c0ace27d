"""Dtype helpers for reductions, scans and sorts.

torch implements few ops for uint16/32/64 (no max, argmax, topk, flip, gather on CPU), so those
tensors are moved into int64 to compute and back afterwards. uint64 does not fit int64: its bits are
reinterpreted and the sign bit flipped, which maps unsigned order onto signed order exactly.
"""
from __future__ import annotations

import torch

_WIDE_UNSIGNED = (torch.uint16, torch.uint32)
_SIGN_BIT = -(2 ** 63)


def to_ordered(x: torch.Tensor) -> torch.Tensor:
    """A tensor torch can compare, sort and select on, with the same order as ``x``."""
    if x.dtype in _WIDE_UNSIGNED:
        return x.to(torch.int64)
    if x.dtype == torch.uint64:
        return x.view(torch.int64) ^ _SIGN_BIT
    if x.dtype == torch.bool:
        return x.to(torch.uint8)
    return x


def from_ordered(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``to_ordered`` for values selected from it (max, min, sort...)."""
    if dtype == torch.uint64:
        return (y ^ _SIGN_BIT).view(torch.uint64)
    return y.to(dtype)


def to_arith(x: torch.Tensor) -> torch.Tensor:
    """A tensor for wrapping integer arithmetic (sum, product, scan): unsigned types go to int64.

    Two's complement arithmetic modulo 2**64 gives the same bits as uint64 arithmetic, and
    narrowing back to the unsigned type wraps the way ONNX's integer ops do.
    """
    if x.dtype == torch.uint64:
        return x.view(torch.int64)
    if x.dtype in _WIDE_UNSIGNED:
        return x.to(torch.int64)
    return x


def from_arith(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.uint64:
        return y.view(torch.uint64)
    return y.to(dtype)


def lowest(dtype: torch.dtype):
    if dtype == torch.bool:
        return False
    if dtype.is_floating_point:
        return float("-inf")
    return torch.iinfo(dtype).min


def highest(dtype: torch.dtype):
    if dtype == torch.bool:
        return True
    if dtype.is_floating_point:
        return float("inf")
    return torch.iinfo(dtype).max


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision for statistics (means, variances, norms) of a float tensor: at least float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
