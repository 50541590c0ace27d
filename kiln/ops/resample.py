"""Ops of the 'resample' family: Resize, Upsample, GridSample, AffineGrid, RoiAlign.

Resize runs Kiln's own separable implementation (resample_resize) because torch's F.interpolate covers
only some of ONNX's coordinate/rounding modes; GridSample and AffineGrid map onto torch directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import OpSet
from .resample_grid import grid_sample_nd, pixel_coords, reflect
from .resample_resize import resize
from .resample_roi import roi_align

ops = OpSet("resample")


def _floats(t) -> list | None:
    """A scales/roi input as Python floats; None when missing or empty."""
    if t is None or t.numel() == 0:
        return None
    return [float(v) for v in t.reshape(-1).tolist()]


def _ints(t) -> list | None:
    if t is None or t.numel() == 0:
        return None
    return [int(v) for v in t.reshape(-1).tolist()]


def _output_geometry(shape, scales, sizes, axes, policy: str):
    """Full-rank (out_sizes, scales) from the Resize inputs and axes/keep_aspect_ratio_policy."""
    rank = len(shape)
    axes = [a % rank for a in axes] if axes else list(range(rank))
    if sizes is not None:
        full_sizes = list(shape)
        for a, s in zip(axes, sizes):
            full_sizes[a] = s
        full_scales = [o / i if i else 1.0 for o, i in zip(full_sizes, shape)]
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            if policy not in ("not_larger", "not_smaller"):
                raise ValueError(f"Resize: unknown keep_aspect_ratio_policy {policy!r}")
            scale = pick(full_scales[a] for a in axes)
            full_scales = [scale if a in axes else 1.0 for a in range(rank)]
            # ONNX rounds half up here.
            full_sizes = [int(scale * shape[a] + 0.5) if a in axes else shape[a] for a in range(rank)]
        return full_sizes, full_scales
    if scales is None:
        raise ValueError("Resize: one of scales or sizes must be given")
    full_scales = [1.0] * rank
    for a, s in zip(axes, scales):
        full_scales[a] = s
    return [int(s * n) for s, n in zip(full_scales, shape)], full_scales


def _full_roi(roi, rank: int, axes) -> list | None:
    if roi is None:
        return None
    if not axes:
        return roi
    axes = [a % rank for a in axes]
    full = [0.0] * rank + [1.0] * rank
    for i, a in enumerate(axes):
        full[a], full[rank + a] = roi[i], roi[len(axes) + i]
    return full


@ops.op("Resize", host_inputs=(1, 2, 3))
def resize_op(ctx, inputs, attrs):
    """Nearest/linear/cubic N-D resize with every coordinate transform, antialias, axes and aspect policy."""
    x = inputs[0]
    mode = attrs.get("mode", "nearest")
    if ctx.opset < 11:
        # Resize-10 (X, scales): asymmetric coordinates and onnxruntime's 'simple' nearest rounding.
        scales, sizes, roi = _floats(inputs[1]), None, None
        params = dict(coord_mode="asymmetric", nearest_mode="simple")
    else:
        get = lambda i: inputs[i] if len(inputs) > i else None  # noqa: E731
        roi, scales, sizes = _floats(get(1)), _floats(get(2)), _ints(get(3))
        params = dict(coord_mode=attrs.get("coordinate_transformation_mode", "half_pixel"),
                      nearest_mode=attrs.get("nearest_mode", "round_prefer_floor"))
    if mode not in ("nearest", "linear", "cubic"):
        raise ValueError(f"Resize: unknown mode {mode!r}")
    params.update(mode=mode, antialias=bool(attrs.get("antialias", 0)) and mode != "nearest",
                  cubic_a=attrs.get("cubic_coeff_a", -0.75), exclude_outside=bool(attrs.get("exclude_outside", 0)),
                  extrapolation_value=attrs.get("extrapolation_value", 0.0))
    axes = attrs.get("axes")
    shape = list(x.shape)
    out_sizes, full_scales = _output_geometry(shape, scales, sizes, axes,
                                              attrs.get("keep_aspect_ratio_policy", "stretch"))
    if params["coord_mode"] != "tf_crop_and_resize":
        roi = None
    return resize(x, out_sizes, full_scales, _full_roi(roi, len(shape), axes), params)


@ops.op("Upsample", host_inputs=(1,))
def upsample(ctx, inputs, attrs):
    """Deprecated Upsample (scales attribute before opset 9, input after): asymmetric nearest/linear."""
    x = inputs[0]
    scales = _floats(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else list(attrs["scales"])
    mode = attrs.get("mode", "nearest")
    mode = "linear" if mode in ("linear", "bilinear") else mode
    out_sizes = [int(s * n) for s, n in zip(scales, x.shape)]
    params = dict(coord_mode="asymmetric", nearest_mode="simple", mode=mode, antialias=False, cubic_a=-0.75,
                  exclude_outside=False, extrapolation_value=0.0)
    return resize(x, out_sizes, scales, None, params)


@ops.op("GridSample")
def grid_sample(ctx, inputs, attrs):
    """Samples X at normalized grid locations, any number of spatial dims."""
    x, grid = inputs
    mode = attrs.get("mode", "linear" if ctx.opset >= 20 else "bilinear")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    if mode not in ("linear", "nearest", "cubic"):
        raise ValueError(f"GridSample: unknown mode {mode!r}")
    padding_mode = attrs.get("padding_mode", "zeros")
    align_corners = bool(attrs.get("align_corners", 0))
    compute = x.dtype if x.is_floating_point() else torch.float32
    xc, grid = x.to(compute), grid.to(compute)
    if x.dim() == 4 or (x.dim() == 5 and mode != "cubic"):
        # torch's grid_sample has ONNX's rounding and padding rules, except for out-of-range cubic points.
        if mode == "cubic" and padding_mode != "zeros":
            grid = _cubic_grid_prepass(grid, x.shape[2:], padding_mode, align_corners)
        y = F.grid_sample(xc, grid, mode=_TORCH_GRID_MODES[mode], padding_mode=padding_mode,
                          align_corners=align_corners)
    else:
        y = grid_sample_nd(xc, grid, mode, padding_mode, align_corners)
    return y.to(x.dtype)


_TORCH_GRID_MODES = {"linear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}


def _cubic_grid_prepass(grid: torch.Tensor, spatial, padding_mode: str, align_corners: bool) -> torch.Tensor:
    """ONNX clamps/reflects an out-of-range bicubic sample point before taking taps; torch only bounds the taps.

    Applying ONNX's step to the grid first makes torch's bicubic sampling agree with ONNX.
    """
    out = []
    for i in range(grid.shape[-1]):
        size = spatial[-1 - i]
        n = grid[..., i]
        if align_corners and size == 1:
            out.append(n)  # a single pixel: every point maps onto it
            continue
        v, lo, hi = pixel_coords(n, size, align_corners)
        if padding_mode == "border":
            v = torch.where((v < lo) | (v > hi), v.clamp(0, size - 1), v)
        else:
            v = reflect(v, lo, hi)
        out.append(v * 2 / (size - 1) - 1 if align_corners else (2 * v + 1) / size - 1)
    return torch.stack(out, dim=-1)


@ops.op("AffineGrid")
def affine_grid(ctx, inputs, attrs):
    """Normalized sampling grid (N, *spatial, ndim) of 2-D or 3-D affine transforms theta."""
    theta, size = inputs
    dims = [int(v) for v in size.tolist()]
    return F.affine_grid(theta, dims, align_corners=bool(attrs.get("align_corners", 0)))


@ops.op("RoiAlign")
def roi_align_op(ctx, inputs, attrs):
    """RoI Align (Mask R-CNN): avg or max of bilinear samples per bin."""
    x, rois, batch_indices = inputs
    # Before opset 16 the only behaviour was the legacy (output_half_pixel) one.
    default = "half_pixel" if ctx.opset >= 16 else "output_half_pixel"
    half_pixel = attrs.get("coordinate_transformation_mode", default) == "half_pixel"
    return roi_align(x, rois, batch_indices, attrs.get("output_height", 1), attrs.get("output_width", 1),
                     attrs.get("sampling_ratio", 0), attrs.get("spatial_scale", 1.0), attrs.get("mode", "avg"),
                     half_pixel)
