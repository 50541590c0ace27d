"""Ops of the 'index' family: gathers, scatters and index-driven selection.

Unique lives in the sibling module ``index_unique``; its kernel is part of this family's OpSet.
Negative indices count from the end of their dimension throughout.
"""
from __future__ import annotations

import math

import torch

from . import index_unique
from .registry import OpSet
from .shape_util import axis, bits, from_values, scalar, unbits, values, wrap_indices

ops = OpSet("index")
ops.ops.extend(index_unique.ops.ops)

_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _scatter(data: torch.Tensor, dim: int, index: torch.Tensor, updates: torch.Tensor, reduction: str):
    """``data`` with ``updates`` written (or combined by ``reduction``) at ``index`` along ``dim``."""
    if reduction == "none":
        return unbits(bits(data).scatter(dim, index, bits(updates)), data.dtype)
    if reduction not in _REDUCE:
        raise ValueError(f"unknown reduction {reduction!r}")
    v = values(data)
    out = v.scatter_reduce(dim, index, values(updates).to(v.dtype), reduce=_REDUCE[reduction], include_self=True)
    return from_values(out, data.dtype)


@ops.op("Gather", host=True)
def gather(ctx, inputs, attrs):
    """Takes whole slices along ``axis``; the output has the indices' shape in place of that axis."""
    x, idx = inputs[0], inputs[1]
    a = axis(attrs.get("axis", 0), x.dim())
    if idx.dim() == 0 and idx.device.type == "cpu":
        # One index held on the host (a constant, a state[k] in a recurrent model) is a select: two op calls
        # instead of five on the CPU, and on the device no copy of the index there (a copy from pageable host
        # memory synchronizes, which CUDA graph capture refuses).
        i = int(idx)
        if not -x.shape[a] <= i < x.shape[a]:
            raise IndexError(f"Gather: index {i} is out of range for axis {a} of size {x.shape[a]}")
        return x.select(a, i % x.shape[a]).clone()
    idx = wrap_indices(idx.to(x.device), x.shape[a])
    y = bits(x).index_select(a, idx.reshape(-1))
    return unbits(y.reshape(x.shape[:a] + idx.shape + x.shape[a + 1:]), x.dtype)


@ops.op("GatherElements")
def gather_elements(ctx, inputs, attrs):
    x, idx = inputs[0], inputs[1].to(inputs[0].device)
    a = axis(attrs.get("axis", 0), x.dim())
    return unbits(torch.gather(bits(x), a, wrap_indices(idx, x.shape[a])), x.dtype)


def _linear_index(idx: torch.Tensor, dims) -> torch.Tensor:
    """Row-major offsets of the index tuples in ``idx``'s last dimension into a block of shape ``dims``."""
    sizes = torch.tensor(list(dims), dtype=torch.int64, device=idx.device)
    idx = idx.to(torch.int64)
    idx = torch.where(idx < 0, idx + sizes, idx)
    strides = [math.prod(dims[i + 1:]) for i in range(len(dims))]
    return (idx * torch.tensor(strides, dtype=torch.int64, device=idx.device)).sum(-1)


@ops.op("GatherND")
def gather_nd(ctx, inputs, attrs):
    """Index tuples in the indices' last dim pick slices of ``data``; the first ``batch_dims`` dims
    (opset 12+) are shared batch dims of both."""
    data, idx = inputs[0], inputs[1].to(inputs[0].device)
    b = attrs.get("batch_dims", 0)
    k = idx.shape[-1]
    batch = math.prod(data.shape[:b])
    rest = data.shape[b + k:]
    picks = math.prod(idx.shape[b:-1])
    flat = bits(data).reshape(batch, math.prod(data.shape[b:b + k]), *rest)
    lin = _linear_index(idx.reshape(batch, picks, k), data.shape[b:b + k])
    rows = torch.arange(batch, device=data.device).unsqueeze(1)
    y = flat[rows, lin]
    return unbits(y.reshape(tuple(idx.shape[:-1]) + tuple(rest)), data.dtype)


@ops.op("ScatterElements", "Scatter")
def scatter_elements(ctx, inputs, attrs):
    """Writes ``updates`` into a copy of ``data`` at ``indices`` along ``axis``; ``reduction`` (opset 16+:
    add, mul; 18+: max, min) combines with the existing value instead. Scatter is the deprecated name."""
    data, idx, upd = inputs[0], inputs[1].to(inputs[0].device), inputs[2]
    a = axis(attrs.get("axis", 0), data.dim())
    return _scatter(data, a, wrap_indices(idx, data.shape[a]), upd, attrs.get("reduction", "none"))


@ops.op("ScatterND")
def scatter_nd(ctx, inputs, attrs):
    """Index tuples in the indices' last dim address slices of ``data`` that receive ``updates``."""
    data, idx, upd = inputs[0], inputs[1].to(inputs[0].device), inputs[2]
    k = idx.shape[-1]
    lead, rest = data.shape[:k], data.shape[k:]
    flat = data.reshape(math.prod(lead), *rest)
    lin = _linear_index(idx.reshape(-1, k), lead)
    upd = upd.reshape(lin.shape[0], *rest)
    index = lin.reshape(-1, *([1] * len(rest))).expand(upd.shape)
    return _scatter(flat, 0, index, upd, attrs.get("reduction", "none")).reshape(data.shape)


@ops.op("TensorScatter")
def tensor_scatter(ctx, inputs, attrs):
    """KV-cache update: ``update`` is written along ``axis`` (default -2) of a copy of ``past_cache``,
    starting for each batch entry at ``write_indices`` (0 if absent); ``mode`` circular wraps around."""
    past, upd = inputs[0], inputs[1]
    write = inputs[2] if len(inputs) > 2 else None
    r = past.dim()
    a = axis(attrs.get("axis", -2), r)
    batch, seq, cap = past.shape[0], upd.shape[a], past.shape[a]
    if write is None:
        write = torch.zeros(batch, dtype=torch.int64, device=past.device)
    pos = write.to(past.device, torch.int64).reshape(batch, *([1] * (r - 1))) + \
        torch.arange(seq, device=past.device).reshape(*([1] * a), seq, *([1] * (r - a - 1)))
    mode = attrs.get("mode", "linear")
    if mode == "circular":
        pos = pos.remainder(cap)
    elif mode != "linear":
        raise ValueError(f"TensorScatter: unknown mode {mode!r}")
    return unbits(bits(past).scatter(a, pos.expand(upd.shape), bits(upd)), past.dtype)


@ops.op("Compress")
def compress(ctx, inputs, attrs):
    """Keeps the slices along ``axis`` (or elements of the flattened input) whose condition is true; a
    condition shorter than the axis drops the rest."""
    x, cond = inputs[0], inputs[1]
    a = attrs.get("axis")
    if a is None:
        x, a = x.reshape(-1), 0
    else:
        a = axis(a, x.dim())
    keep = cond.reshape(-1).to(torch.bool)[: x.shape[a]].nonzero().reshape(-1).to(x.device)
    return unbits(bits(x).index_select(a, keep), x.dtype)


@ops.op("NonZero")
def nonzero(ctx, inputs, attrs):
    """Indices of the non-zero elements as a (rank, count) int64 tensor, in row-major order."""
    x = inputs[0]
    v = x.to(torch.float32) if x.dtype.is_floating_point and x.dtype.itemsize == 1 else bits(x)
    if v.dim() == 0:  # ONNX treats a scalar as a one-element vector
        v = v.reshape(1)
    return torch.nonzero(v).T.contiguous()


@ops.op("OneHot", host_inputs=(1,))
def one_hot(ctx, inputs, attrs):
    """A new axis of size ``depth`` holding ``values[1]`` at each index and ``values[0]`` elsewhere;
    indices outside [-depth, depth-1] give all ``values[0]``."""
    idx, vals = inputs[0], inputs[2]
    depth = int(scalar(inputs[1]))
    idx = idx.to(torch.int64)
    idx = torch.where(idx < 0, idx + depth, idx)
    a = axis(attrs.get("axis", -1), idx.dim() + 1)
    view = [1] * (idx.dim() + 1)
    view[a] = depth
    hit = idx.unsqueeze(a) == torch.arange(depth, device=idx.device).reshape(view)
    v = bits(vals.reshape(-1))
    return unbits(torch.where(hit, v[1], v[0]), vals.dtype)


@ops.op("ReverseSequence")
def reverse_sequence(ctx, inputs, attrs):
    """Reverses the first ``sequence_lens[i]`` steps along ``time_axis`` of each batch entry i."""
    x, lens = inputs[0], inputs[1]
    t, b = attrs.get("time_axis", 0), attrs.get("batch_axis", 1)
    steps, batch = x.shape[t], x.shape[b]
    pos = torch.arange(steps, device=x.device).unsqueeze(1)
    n = lens.to(x.device, torch.int64).reshape(1, batch)
    src = torch.where(pos < n, n - 1 - pos, pos)  # (time, batch)
    view = [1] * x.dim()
    view[t], view[b] = steps, batch
    src = (src if t < b else src.T).reshape(view).expand(x.shape)
    return unbits(torch.gather(bits(x), t, src), x.dtype)
