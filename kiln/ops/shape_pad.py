"""Pad and CenterCropPad (part of the 'shape' family's OpSet)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import OpSet
from .shape_util import axis, bits, ints, unbits

ops = OpSet("shape")


def _source_index(n_out: int, begin: int, dim: int, mode: str, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For each output position along one axis, the input position it reads, and (constant mode) which
    positions are padding."""
    src = torch.arange(n_out, device=device) - begin
    if mode == "constant":
        inside = (src >= 0) & (src < dim)
        return src.clamp(0, max(dim - 1, 0)), ~inside
    if dim == 0:
        raise ValueError(f"Pad: mode {mode!r} cannot pad an empty dim")
    if mode == "edge":
        return src.clamp(0, dim - 1), None
    if mode == "wrap":
        return src.remainder(dim), None
    if mode == "reflect":
        if dim == 1:
            return torch.zeros_like(src), None
        period = 2 * (dim - 1)
        src = src.remainder(period)
        return torch.where(src >= dim, period - src, src), None
    raise ValueError(f"Pad: unknown mode {mode!r}")


def pad_tensor(x: torch.Tensor, begins: list[int], ends: list[int], mode: str = "constant",
               value: torch.Tensor | None = None) -> torch.Tensor:
    """Pad (positive) or crop (negative) every axis of ``x`` by ``begins``/``ends``.

    Works for any rank, dtype and mode by gathering along one axis at a time; ``value`` is a 0-d
    tensor of x's dtype for constant mode (zero if None).
    """
    dtype = x.dtype
    y = bits(x)
    if mode == "constant" and not x.is_complex():
        # Fast path: torch's constant pad (negative pads crop) takes the fill as a double, so it is used
        # only where that is exact. A meta fill (shape inference) cannot change the shape.
        fill = 0 if value is None or value.is_meta else bits(value.reshape(())).item()
        if float(fill) == fill:
            flat = [p for b, e in zip(reversed(begins), reversed(ends)) for p in (b, e)]
            return unbits(F.pad(y, flat, value=fill), dtype)
    if mode in _TORCH_MODES and (one_call := _torch_mode_pad(x, begins, ends, mode)) is not None:
        return one_call
    fill = None
    if mode == "constant":
        fill = bits(value.reshape(()).to(x.device)) if value is not None else torch.zeros((), dtype=y.dtype,
                                                                                            device=x.device)
    for a, (b, e) in enumerate(zip(begins, ends)):
        if b == 0 and e == 0:
            continue
        dim = y.shape[a]
        # Crop first, so that padding only ever sees the kept part.
        lo, hi = max(-b, 0), dim - max(-e, 0)
        if lo or hi != dim:
            y = y.narrow(a, lo, max(hi - lo, 0))
            dim = y.shape[a]
        b, e = max(b, 0), max(e, 0)
        if b == 0 and e == 0:
            continue
        src, pad_mask = _source_index(dim + b + e, b, dim, mode, x.device)
        if dim == 0:  # nothing to gather from: the result is all padding
            shape = list(y.shape)
            shape[a] = b + e
            y = fill.expand(shape).clone()
            continue
        y = y.index_select(a, src)
        if pad_mask is not None:
            view = [1] * y.dim()
            view[a] = -1
            y = torch.where(pad_mask.view(view), fill, y)
    return unbits(y, dtype)


_TORCH_MODES = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}
_TORCH_MODE_DTYPES = frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16})


def _torch_mode_pad(x: torch.Tensor, begins: list[int], ends: list[int], mode: str) -> torch.Tensor | None:
    """reflect/edge/wrap padding of a float tensor's last 1-3 axes as one torch call, where torch's rules allow
    it (non-negative pads, reflect pads shorter than the axis, wrap pads at most the axis, a rank of k+1 or k+2
    for k padded axes, no empty dim); None otherwise. The gather path below costs five op calls per axis, and a voice model's
    STFT pads its input this way on every call (silero-vad: 37 us against 10)."""
    padded = [a for a, (b, e) in enumerate(zip(begins, ends)) if b or e]
    if not padded or x.dtype not in _TORCH_MODE_DTYPES or min(begins + ends) < 0 or x.numel() == 0:
        return None
    k = x.dim() - padded[0]
    if k > 3 or x.dim() not in (k + 1, k + 2):
        return None
    for a in range(padded[0], x.dim()):
        longest = max(begins[a], ends[a])
        if (mode == "reflect" and longest >= x.shape[a]) or (mode == "wrap" and longest > x.shape[a]) or \
                x.shape[a] == 0:
            return None
    flat = [p for b, e in zip(reversed(begins[-k:]), reversed(ends[-k:])) for p in (b, e)]
    return F.pad(x, flat, mode=_TORCH_MODES[mode])


@ops.op("Pad", host_inputs=(1, 3))
def pad(ctx, inputs, attrs):
    """Pads as ``[begin_0, .., begin_n, end_0, .., end_n]``: the ``paddings`` (opset 1) or ``pads`` (2-10)
    attribute with a ``value`` attribute, or inputs 2 and 3 (11+) with ``axes`` as input 4 (18+).
    Negative pads crop. Modes: constant, reflect, edge, wrap (19+)."""
    x = inputs[0]
    mode = attrs.get("mode", "constant")
    value = None
    if ctx.opset < 11:
        pads = list(attrs.get("pads", attrs.get("paddings", [])))
        value = torch.tensor(attrs.get("value", 0.0), device=x.device).to(x.dtype)
    else:
        pads = ints(inputs[1])
        if len(inputs) > 2 and inputs[2] is not None and inputs[2].numel():
            value = inputs[2].reshape(-1)[0].to(x.dtype)
    axes = list(range(x.dim()))
    if len(inputs) > 3 and inputs[3] is not None:
        axes = [axis(a, x.dim()) for a in ints(inputs[3])]
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad: {len(pads)} pads for {len(axes)} axes")
    begins, ends = [0] * x.dim(), [0] * x.dim()
    for i, a in enumerate(axes):
        begins[a], ends[a] = pads[i], pads[i + len(axes)]
    return pad_tensor(x, begins, ends, mode, value)


@ops.op("CenterCropPad", host_inputs=(1, 2))
def center_crop_pad(ctx, inputs, attrs):
    """Crops or zero-pads each listed axis to the requested size, keeping the center; an odd
    difference puts the extra element at the end."""
    x = inputs[0]
    sizes = ints(inputs[1])
    axes = [axis(a, x.dim()) for a in attrs.get("axes", range(x.dim()))]
    begins, ends = [0] * x.dim(), [0] * x.dim()
    for a, size in zip(axes, sizes):
        diff = size - x.shape[a]
        begins[a] = diff // 2 if diff >= 0 else -((-diff) // 2)
        ends[a] = diff - begins[a]
    return pad_tensor(x, begins, ends)
