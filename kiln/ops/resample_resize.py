"""Resize as separable 1-D passes: per axis, each output position reads a few taps with weights.

Every ONNX Resize mode (nearest/linear/cubic, antialias, exclude_outside, all coordinate transforms) is
separable, so an N-D resize is one gather-and-weigh pass per changed axis. The tap window and weights
follow ONNX's definition: x0 = ceil(x_orig) - 1, ratio = x_orig - x0 in (0, 1], taps centred on x_orig,
indices outside the input clamped to the edge.
"""
from __future__ import annotations

import functools
import math

import torch


def source_coords(mode: str, out_len: int, in_len: int, scale: float, roi=None, device=None):
    """x_original (float64) for each output index along one axis, and the tf_crop_and_resize outside-mask."""
    y = torch.arange(out_len, dtype=torch.float64, device=device)
    out_f = scale * in_len  # ONNX uses the unrounded output length in these formulas
    outside = None
    if mode == "align_corners":
        x = torch.zeros_like(y) if out_f == 1 else y * (in_len - 1) / (out_f - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_half_pixel_for_nn":
        x = (y + 0.5) / scale
    elif mode == "tf_crop_and_resize":
        start, end = roi
        if out_f == 1:
            x = torch.full_like(y, (end - start) * (in_len - 1) / 2)
        else:
            x = y * (end - start) * (in_len - 1) / (out_f - 1)
        x = x + start * (in_len - 1)
        outside = (x < 0) | (x > in_len - 1)
    elif mode == "pytorch_half_pixel":
        x = torch.full_like(y, -0.5) if out_f == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / out_f)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"Resize: unknown coordinate_transformation_mode {mode!r}")
    return x, outside


def nearest_index(x: torch.Tensor, nearest_mode: str, scale: float, in_len: int) -> torch.Tensor:
    if nearest_mode == "round_prefer_floor":
        idx = torch.ceil(x - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        idx = torch.floor(x + 0.5)
    elif nearest_mode == "floor":
        idx = torch.floor(x)
    elif nearest_mode == "ceil":
        idx = torch.ceil(x)
    elif nearest_mode == "simple":
        # Resize-10 / Upsample: ceil when downsampling, floor when upsampling (as onnxruntime does).
        idx = torch.ceil(x) if scale < 1 else torch.floor(x)
    else:
        raise ValueError(f"Resize: unknown nearest_mode {nearest_mode!r}")
    return idx.clamp(0, in_len - 1).long()


def _cubic(d: torch.Tensor, a: float) -> torch.Tensor:
    d = d.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def tap_weights(x: torch.Tensor, in_len: int, mode: str, scale: float, antialias: bool, cubic_a: float,
                exclude_outside: bool):
    """(indices, weights) of shape (out_len, taps) for linear/cubic along one axis."""
    support = 1 if mode == "linear" else 2
    s = min(scale, 1.0) if antialias else 1.0
    start = math.floor(-support / s) + 1  # first tap offset relative to x0
    taps = 2 - 2 * start
    x0 = torch.ceil(x) - 1
    pos = x0[:, None] + torch.arange(start, start + taps, dtype=x.dtype, device=x.device)[None]
    d = (pos - x[:, None]) * s
    w = (1 - d.abs()).clamp(min=0) if mode == "linear" else _cubic(d, cubic_a)
    if antialias:
        w = w / w.sum(dim=1, keepdim=True)
    if exclude_outside:
        w = torch.where((pos < 0) | (pos > in_len - 1), torch.zeros_like(w), w)
        total = w.sum(dim=1, keepdim=True)
        w = w / torch.where(total == 0, torch.ones_like(total), total)
    return pos.clamp(0, in_len - 1).long(), w


def resize_axis(x: torch.Tensor, axis: int, out_len: int, scale: float, p: dict, roi=None) -> torch.Tensor:
    """One separable pass of Resize along ``axis`` (x already in the compute dtype for linear/cubic)."""
    in_len = x.shape[axis]
    # Advanced indexing rather than index_select: the latter is far slower on CPU along trailing dims.
    lead = (slice(None),) * axis
    on_host = x.device.type == "cpu"
    if p["mode"] == "nearest":
        reps, idx, outside = _nearest_plan(p["coord_mode"], p["nearest_mode"], out_len, in_len, scale, roi)
        if reps and outside is None:
            # Whole-number upsampling that repeats each element: a broadcast copy beats a gather.
            wide = x.unsqueeze(axis + 1).expand(*x.shape[:axis + 1], reps, *x.shape[axis + 1:])
            return wide.flatten(axis, axis + 1)
        if not on_host:
            # The indices again, made on the device: copying the host ones would be a pageable copy, which
            # synchronizes and is refused inside CUDA graph capture.
            coords, outside = source_coords(p["coord_mode"], out_len, in_len, scale, roi, x.device)
            idx = nearest_index(coords, p["nearest_mode"], scale, in_len)
        y = x[lead + (idx,)]
    else:
        key = (p["coord_mode"], out_len, in_len, scale, roi, p["mode"], p["antialias"], p["cubic_a"],
               p["exclude_outside"])
        idx, w, outside = _host_tap_plan(*key) if on_host else _tap_plan(*key, device=x.device)
        taps = x[lead + (idx,)]  # the axis becomes (out_len, taps)
        w = w.to(x.dtype).reshape(list(idx.shape) + [1] * (x.dim() - axis - 1))
        y = (taps * w).sum(dim=axis + 1)
    if outside is not None:
        mshape = [1] * x.dim()
        mshape[axis] = out_len
        fill = torch.tensor(p["extrapolation_value"], dtype=y.dtype, device=y.device)
        y = torch.where(outside.reshape(mshape), fill, y)
    return y


# The index and weight tables of one axis depend only on these Python values, so the host ones are made once
# per shape, not on every run: they were ~20 small op calls per Resize (a text detector's FPN has six).
# Cached tensors are only read (indexing, torch.where), never written.
@functools.lru_cache(maxsize=256)
def _nearest_plan(coord_mode: str, nearest_mode: str, out_len: int, in_len: int, scale: float, roi):
    """(repeat count or 0, source indices, tf_crop_and_resize outside-mask or None), on the host."""
    coords, outside = source_coords(coord_mode, out_len, in_len, scale, roi)
    idx = nearest_index(coords, nearest_mode, scale, in_len)
    return _repeat_count(idx, in_len, out_len), idx, outside


def _tap_plan(coord_mode: str, out_len: int, in_len: int, scale: float, roi, mode: str, antialias: bool,
              cubic_a: float, exclude_outside: bool, device=None):
    """(tap indices, tap weights, outside-mask or None) of a linear/cubic pass, made on ``device``."""
    coords, outside = source_coords(coord_mode, out_len, in_len, scale, roi, device)
    idx, w = tap_weights(coords, in_len, mode, scale, antialias, cubic_a, exclude_outside)
    return idx, w, outside


_host_tap_plan = functools.lru_cache(maxsize=256)(_tap_plan)  # the host tables, once per shape


def _repeat_count(idx: torch.Tensor, in_len: int, out_len: int) -> int:
    """r when the nearest indices just repeat every input element r times, else 0."""
    if in_len == 0 or out_len % in_len:
        return 0
    reps = out_len // in_len
    return reps if torch.equal(idx, torch.arange(out_len) // reps) else 0


_TORCH_UPSAMPLE = {
    ("linear", 3): torch.ops.aten.upsample_linear1d,
    ("linear", 4): torch.ops.aten.upsample_bilinear2d,
    ("linear", 5): torch.ops.aten.upsample_trilinear3d,
    ("cubic", 4): torch.ops.aten.upsample_bicubic2d,
}


def _torch_upsample(x: torch.Tensor, out_sizes: list, scales: list, p: dict):
    """torch's own upsample kernel where its arithmetic is ONNX's, else None.

    That is: float data, only spatial axes resized, no antialias/exclude_outside, cubic with a=-0.75,
    and a coordinate mode torch implements (half_pixel, pytorch_half_pixel with every size > 1, or
    align_corners when scale * in_len is exactly the output length).
    """
    op = _TORCH_UPSAMPLE.get((p["mode"], x.dim()))
    if op is None or not x.is_floating_point() or p["antialias"] or p["exclude_outside"]:
        return None
    if p["mode"] == "cubic" and p["cubic_a"] != -0.75:
        return None
    if list(out_sizes[:2]) != list(x.shape[:2]) or scales[0] != 1.0 or scales[1] != 1.0:
        return None
    spatial, spatial_scales = list(out_sizes[2:]), list(scales[2:])
    mode = p["coord_mode"]
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and min(spatial) > 1):
        # Passing ONNX's scales makes torch map coordinates with them rather than with in/out.
        return op(x, spatial, False, *spatial_scales)
    if mode == "align_corners" and all(s * n == o for s, n, o in zip(spatial_scales, x.shape[2:], spatial)):
        return op(x, spatial, True, *([None] * len(spatial)))
    return None


def resize(x: torch.Tensor, out_sizes: list, scales: list, roi: list | None, p: dict) -> torch.Tensor:
    """Resize every axis whose size, scale or RoI is not the identity."""
    fast = _torch_upsample(x, out_sizes, scales, p)
    if fast is not None:
        return fast
    rank = x.dim()
    interp = p["mode"] != "nearest"
    compute = _compute_dtype(x.dtype) if interp else x.dtype
    y = x if x.dtype == compute else x.to(compute)
    for ax in range(rank):
        axis_roi = None if roi is None else (roi[ax], roi[rank + ax])
        identity_roi = axis_roi is None or (math.isclose(axis_roi[0], 0.0) and math.isclose(axis_roi[1], 1.0))
        if math.isclose(scales[ax], 1.0) and out_sizes[ax] == x.shape[ax] and identity_roi:
            continue
        y = resize_axis(y, ax, out_sizes[ax], scales[ax], p, axis_roi)
    if interp and not x.dtype.is_floating_point:
        info = torch.iinfo(x.dtype)
        y = torch.round(y).clamp(info.min, info.max)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _compute_dtype(dt: torch.dtype) -> torch.dtype:
    # Integer results are rounded, so they need the precision that puts halves on the right side.
    if dt == torch.float64 or not dt.is_floating_point:
        return torch.float64
    return torch.float32
