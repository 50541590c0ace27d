"""Helpers shared by the shape, index and detection families: reading small parameter tensors,
normalizing axes, and running data-movement ops on element types torch supports only partly."""
from __future__ import annotations

import torch

# torch implements few kernels (gather, scatter, where, nonzero, ...) for its unsigned and float8
# types. Ops that only move elements can run on a same-width signed integer view of the bits.
_BITS_VIEW: dict[torch.dtype, torch.dtype] = {
    torch.uint16: torch.int16,
    torch.uint32: torch.int32,
    torch.uint64: torch.int64,
    torch.float8_e4m3fn: torch.int8,
    torch.float8_e4m3fnuz: torch.int8,
    torch.float8_e5m2: torch.int8,
    torch.float8_e5m2fnuz: torch.int8,
}
if hasattr(torch, "float8_e8m0fnu"):
    _BITS_VIEW[torch.float8_e8m0fnu] = torch.uint8


def bits(x: torch.Tensor) -> torch.Tensor:
    """``x`` viewed as a type every torch data-movement kernel accepts (same element width)."""
    view = _BITS_VIEW.get(x.dtype)
    return x if view is None else x.view(view)


def unbits(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Undo :func:`bits` on a result computed from the view."""
    return y if y.dtype == dtype else y.view(dtype)


def values(x: torch.Tensor) -> torch.Tensor:
    """``x`` in a type torch can do arithmetic and comparisons on, with the same values."""
    if x.dtype in (torch.uint16, torch.uint32, torch.bool):
        return x.to(torch.int64)  # bool: sum/max act as "or", prod/min as "and" once cast back
    if x.dtype == torch.uint64:
        return x.view(torch.int64)  # wraps values >= 2**63; add and mul stay exact modulo 2**64
    if x.dtype.is_floating_point and x.dtype.itemsize == 1:
        return x.to(torch.float32)
    return x


def from_values(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Undo :func:`values`."""
    if y.dtype == dtype:
        return y
    if dtype == torch.uint64:
        return y.view(torch.uint64)
    return y.to(dtype)


def ints(t) -> list[int]:
    """A small shape/axes/index tensor (or list) read as Python ints."""
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        # A 1-D tensor (the usual shape/axes input) is read without the reshape: each op call costs a few
        # microseconds, and shape layers run several of these per inference.
        vals = t.tolist() if t.dim() <= 1 else t.reshape(-1).tolist()
        return [int(v) for v in vals] if isinstance(vals, list) else [int(vals)]
    if isinstance(t, (list, tuple)):
        return [int(v) for v in t]
    return [int(t)]


def scalar(t, default=None):
    """A scalar (or one-element) input as a Python number; ``default`` where the input is missing."""
    if t is None or (isinstance(t, torch.Tensor) and t.numel() == 0):
        return default
    if isinstance(t, torch.Tensor):
        v = t.reshape(-1)[0]
        return v.item() if not v.dtype.is_floating_point or v.dtype.itemsize > 1 else float(v.float())
    return t


def axis(a: int, rank: int) -> int:
    """Normalize a possibly negative axis; ONNX's valid range is [-rank, rank-1]."""
    if not -rank <= a < max(rank, 1):
        raise ValueError(f"axis {a} is out of range for rank {rank}")
    return a + rank if a < 0 else a


def wrap_indices(idx: torch.Tensor, dim: int) -> torch.Tensor:
    """Integer indices as int64 with negative ones counted from the end of a dimension of size ``dim``."""
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + dim, idx)
