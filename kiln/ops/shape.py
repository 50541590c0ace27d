"""Ops of the 'shape' family: shape queries, reshaping, joining/splitting and slicing.

Padding, cropping and tensor generators (ConstantOfShape, EyeLike, Range, Trilu, DepthToSpace,
SpaceToDepth) live in the sibling modules ``shape_pad`` and ``shape_make``; their kernels are part
of this family's OpSet.
"""
from __future__ import annotations

import math

import torch

from ..errors import UnsupportedOpError
from . import shape_make, shape_pad
from .registry import OpSet
from .shape_util import axis, bits, ints, scalar, unbits

ops = OpSet("shape")
ops.ops.extend(shape_pad.ops.ops)
ops.ops.extend(shape_make.ops.ops)


def _optional(inputs: list, first: int, count: int) -> list:
    """Inputs ``first`` .. ``first + count - 1``, None for those the node leaves out."""
    return [inputs[i] if i < len(inputs) else None for i in range(first, first + count)]


def _const_i64(vals, device) -> torch.Tensor:
    return torch.tensor(vals, dtype=torch.int64, device=device)


@ops.op("Shape", host=True)
def shape(ctx, inputs, attrs):
    """Dims of the input as int64; ``start``/``end`` (opset 15+) select a range, clamped like Python slicing."""
    x = inputs[0]
    dims = list(x.shape)[attrs.get("start", 0): attrs.get("end", None)]
    return _const_i64(dims, ctx.device)  # ctx.device: GPU engines keep shapes on the host


@ops.op("Size", host=True)
def size(ctx, inputs, attrs):
    x = inputs[0]
    return _const_i64(x.numel(), ctx.device)


@ops.op("Reshape", view=True, reshape=True, host=True, host_inputs=(1,))
def reshape(ctx, inputs, attrs):
    """Target shape from input 2 (opset 5+) or the ``shape`` attribute; 0 copies the input dim unless
    ``allowzero`` (opset 14+), and one -1 takes what is left."""
    x = inputs[0]
    target = ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else list(attrs.get("shape", []))
    if not attrs.get("allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        # torch refuses -1 next to a 0 dim; the free dim of an empty tensor is taken as 0.
        target[target.index(-1)] = x.numel() // known if known else 0
    return x.reshape(target)


@ops.op("Flatten", view=True, reshape=True)
def flatten(ctx, inputs, attrs):
    x = inputs[0]
    a = attrs.get("axis", 1)
    a = a + x.dim() if a < 0 else a
    return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))


def _axes_param(ctx, inputs, attrs, since: int) -> list[int] | None:
    """Axes from the attribute before opset ``since``, from input 2 from it on; None when absent."""
    if ctx.opset < since:
        return attrs.get("axes")
    if len(inputs) > 1 and inputs[1] is not None:
        return ints(inputs[1])
    return None


@ops.op("Squeeze", view=True, reshape=True, host=True, host_inputs=(1,))
def squeeze(ctx, inputs, attrs):
    """Axes attribute before opset 13, optional input after; without axes every size-1 dim goes."""
    x = inputs[0]
    axes = _axes_param(ctx, inputs, attrs, 13)
    if axes is None:
        return x.reshape([d for d in x.shape if d != 1])
    axes = {axis(a, x.dim()) for a in axes}
    for a in axes:
        if x.shape[a] != 1:
            raise ValueError(f"Squeeze: dim {a} has size {x.shape[a]}, not 1")
    return x.reshape([d for i, d in enumerate(x.shape) if i not in axes])


@ops.op("Unsqueeze", view=True, reshape=True, host=True, host_inputs=(1,))
def unsqueeze(ctx, inputs, attrs):
    """Axes (attribute before opset 13, input after) index the output's dims."""
    x = inputs[0]
    axes = _axes_param(ctx, inputs, attrs, 13) or []
    rank = x.dim() + len(axes)
    axes = sorted(axis(a, rank) for a in axes)
    if len(set(axes)) != len(axes):
        raise ValueError("Unsqueeze: repeated axes")
    dims = list(x.shape)
    for a in axes:
        dims.insert(a, 1)
    return x.reshape(dims)


@ops.op("Transpose", view=True)
def transpose(ctx, inputs, attrs):
    x = inputs[0]
    perm = attrs.get("perm") or list(range(x.dim() - 1, -1, -1))
    return x.permute([axis(p, x.dim()) for p in perm])


@ops.op("Expand", host_inputs=(1,))
def expand(ctx, inputs, attrs):
    """Broadcast both ways: a 1 in the requested shape keeps the input's dim."""
    x = inputs[0]
    out = torch.broadcast_shapes(tuple(x.shape), tuple(ints(inputs[1])))
    # A materialized result: stride-0 views surprise kernels that reshape with .view().
    return x.expand(out).contiguous()


@ops.op("Tile", host_inputs=(1,))
def tile(ctx, inputs, attrs):
    """Repeats per dim from input 2; opset 1 instead takes a tile count and an axis as inputs 2 and 3."""
    x = inputs[0]
    if len(inputs) > 2 and inputs[2] is not None:
        reps = [1] * x.dim()
        reps[axis(int(scalar(inputs[2])), x.dim())] = int(scalar(inputs[1]))
    else:
        reps = ints(inputs[1])
    if x.dim() == 0:
        return x.clone()
    return x.repeat(reps)


@ops.op("Concat", host=True)
def concat(ctx, inputs, attrs, out=None):
    xs = [t for t in inputs if t is not None]
    a = axis(attrs.get("axis", 1), xs[0].dim())  # opset 1 defaults to 1; later opsets require it
    if out is not None and all(x.dtype == out.dtype and x.device == out.device for x in xs):
        return torch.cat(xs, dim=a, out=out)
    return torch.cat(xs, dim=a)


concat.accepts_out = ("cpu", "cuda")


@ops.op("Split", view=True, host_inputs=(1,))
def split(ctx, inputs, attrs):
    """Sizes from the ``split`` attribute (before opset 13) or input 2; otherwise equal parts, one per
    output (or ``num_outputs``, opset 18+), the last one smaller when the dim does not divide."""
    x = inputs[0]
    a = axis(attrs.get("axis", 0), x.dim())
    sizes = None
    if len(inputs) > 1 and inputs[1] is not None:
        sizes = ints(inputs[1])
    elif attrs.get("split") is not None:
        sizes = list(attrs["split"])
    if sizes is None:
        n = attrs.get("num_outputs", ctx.num_outputs)
        chunk = -(-x.shape[a] // n)
        sizes = [min(chunk, max(0, x.shape[a] - i * chunk)) for i in range(n)]
    if sum(sizes) != x.shape[a]:
        raise ValueError(f"Split: sizes {sizes} do not add up to dim {x.shape[a]}")
    return tuple(torch.split(x, sizes, dim=a))


def _slice_axis(x: torch.Tensor, a: int, start: int, end: int, step: int) -> torch.Tensor:
    dim = x.shape[a]
    lead = (slice(None),) * a
    if step == 0:
        raise ValueError("Slice: step must not be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return x[lead + (slice(start, end, step),)]
    if dim == 0:
        return x
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    n = max(0, -(-(start - end) // -step))
    if n == 0:
        return x[lead + (slice(0, 0),)]
    # torch has no negative-step views: take the same elements forwards, then reverse them.
    last = start + (n - 1) * step
    return unbits(bits(x[lead + (slice(last, start + 1, -step),)]).flip(a), x.dtype)


@ops.op("Slice", view=True, host=True, host_inputs=(1, 2, 3, 4))
def slice_(ctx, inputs, attrs):
    """starts/ends/axes are attributes before opset 10 and inputs (plus steps) from it on. Out-of-range
    bounds clamp; negative steps walk backwards."""
    x = inputs[0]
    if ctx.opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends, axes, steps = (ints(t) if t is not None else None for t in _optional(inputs, 1, 4))
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for a, s, e, st in zip(axes, starts, ends, steps):
        x = _slice_axis(x, axis(a, x.dim()), s, e, st)
    return x


@ops.op("Identity", view=True, same_shape=True, host=True)
def identity(ctx, inputs, attrs):
    """Passes tensors, sequences and optionals through unchanged."""
    x = inputs[0]
    return list(x) if isinstance(x, list) else x  # a sequence is a new value, not an alias of the input's list


@ops.op("Dropout", same_shape=True, host_inputs=(1, 2))
def dropout(ctx, inputs, attrs):
    """Inference semantics: the output is the input and the mask is all true. Training mode with a
    non-zero ratio (inputs 2 and 3, opset 12+) would be random, which Kiln does not run. Opsets
    before 7 carry ``is_test``; such models are run as in test mode too."""
    x = inputs[0]
    if ctx.opset >= 12:
        # Shape inference may pass an unknown (meta) ratio or mode; the output shape does not depend on them.
        ratio_in, mode_in = (None if t is None or t.is_meta else t for t in _optional(inputs, 1, 2))
        ratio = scalar(ratio_in, 0.5)
        training = bool(scalar(mode_in, False))
        if training and ratio > 0:
            reason = "Dropout in training mode with ratio > 0 is random; Kiln's outputs are deterministic"
            raise UnsupportedOpError([(ctx.node_name, "", "Dropout", reason)])
    if not ctx.wants(1):
        return x
    mask_type = ctx.output_dtype(1)
    mask_dtype = mask_type.torch if mask_type is not None else (torch.bool if ctx.opset >= 10 else x.dtype)
    return x, torch.ones(x.shape, dtype=mask_dtype, device=x.device)


def _blocksize(attrs) -> int:
    if "blocksize" not in attrs:
        raise ValueError("blocksize attribute is required")
    return attrs["blocksize"]


@ops.op("DepthToSpace")
def depth_to_space(ctx, inputs, attrs):
    """Moves channel blocks into (h, w) blocks. DCR (default) reads channels as (block_h, block_w, c);
    CRD as (c, block_h, block_w)."""
    x = inputs[0]
    bs = _blocksize(attrs)
    b, c, h, w = x.shape
    oc = c // (bs * bs)
    if attrs.get("mode", "DCR") == "CRD":
        y = x.reshape(b, oc, bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(b, bs, bs, oc, h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(b, oc, h * bs, w * bs)


@ops.op("SpaceToDepth")
def space_to_depth(ctx, inputs, attrs):
    """Inverse of DepthToSpace; ``mode`` (opset 28+) orders the new channels DCR (default) or CRD."""
    x = inputs[0]
    bs = _blocksize(attrs)
    b, c, h, w = x.shape
    y = x.reshape(b, c, h // bs, bs, w // bs, bs)
    if attrs.get("mode", "DCR") == "CRD":
        y = y.permute(0, 1, 3, 5, 2, 4)
    else:
        y = y.permute(0, 3, 5, 1, 2, 4)
    return y.reshape(b, c * bs * bs, h // bs, w // bs)
