"""Unique (part of the 'index' family's OpSet)."""
from __future__ import annotations

import torch

from .registry import OpSet
from .shape_util import axis, bits, unbits

ops = OpSet("index")


def _order_key(x: torch.Tensor) -> torch.Tensor:
    """Values torch.unique can sort that order (and compare) like ``x``'s elements."""
    if x.dtype in (torch.uint16, torch.uint32):
        return x.to(torch.int64)
    if x.dtype == torch.uint64:
        # Flipping the top bit maps unsigned order onto signed order.
        return x.view(torch.int64) ^ torch.iinfo(torch.int64).min
    if x.dtype.is_floating_point and x.dtype.itemsize == 1:
        return x.to(torch.float32)
    return x


@ops.op("Unique")
def unique(ctx, inputs, attrs):
    """Unique elements (or slices along ``axis``), sorted ascending or (``sorted``=0) in order of first
    occurrence; also the first-occurrence indices, the inverse indices and the counts."""
    x = inputs[0]
    a = attrs.get("axis")
    if a is None:
        x, dim = x.reshape(-1), 0
    else:
        dim = axis(a, x.dim())
    key = _order_key(x)
    if key.is_complex():  # ordered by real part, then imaginary part, like numpy
        key = torch.view_as_real(key)
    if a is None and not x.is_complex():
        _, inverse, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True, dim=dim)
    n = x.shape[dim]
    first = torch.full((counts.shape[0],), n, dtype=torch.int64, device=x.device)
    first = first.scatter_reduce(0, inverse, torch.arange(n, device=x.device), reduce="amin")
    if not attrs.get("sorted", 1):
        order = torch.argsort(first)
        rank = torch.empty_like(order).scatter(0, order, torch.arange(order.shape[0], device=x.device))
        first, counts, inverse = first[order], counts[order], rank[inverse]
    y = unbits(bits(x).index_select(dim, first), x.dtype)
    return y, first, inverse, counts
