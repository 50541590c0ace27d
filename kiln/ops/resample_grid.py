"""GridSample where torch's grid_sample stops: any number of spatial dims, and cubic beyond 2-D.

Per spatial dim, each sample point gets its taps (1 nearest, 2 linear, 4 cubic) and weights after ONNX's
out-of-range handling; the N-D result is the sum over the product of the per-dim taps, each one a gather
from the flattened image.
"""
from __future__ import annotations

import itertools

import torch


def reflect(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Fold ``v`` back into [lo, hi] by repeated mirroring at the borders."""
    span = hi - lo
    dist = torch.where(v < lo, lo - v, v - hi)
    n = torch.floor(dist / span)
    r = dist - n * span
    even = torch.remainder(n, 2) == 0
    from_low = torch.where(even, lo + r, hi - r)
    from_high = torch.where(even, hi - r, lo + r)
    return torch.where(v < lo, from_low, torch.where(v > hi, from_high, v))


def pixel_coords(norm: torch.Tensor, size: int, align_corners: bool):
    """Pixel coordinate of normalized ``norm`` and the [lo, hi] range counted as inside."""
    if align_corners:
        return (norm + 1) / 2 * (size - 1), 0.0, size - 1.0
    return ((norm + 1) * size - 1) / 2, -0.5, size - 0.5


def _cubic_coeffs(t: torch.Tensor, a: float = -0.75) -> list:
    def near(d):
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _axis_taps(v: torch.Tensor, size: int, lo: float, hi: float, mode: str, padding_mode: str) -> list:
    """[(index, weight)] along one dim; index is clamped in range, weight is 0 for zero-padded taps."""
    if mode == "nearest":
        v = torch.round(v)  # half to even, as ONNX (and torch) specify
    outside = (v < lo) | (v > hi)
    if padding_mode == "border":
        v = torch.where(outside, v.clamp(0, size - 1), v)
    elif padding_mode == "reflection":
        v = reflect(v, lo, hi)
    if mode == "nearest":
        taps = [(torch.trunc(v), torch.ones_like(v))]
    else:
        base = torch.floor(v)
        t = v - base
        if mode == "linear":
            taps = [(base, 1 - t), (base + 1, t)]
        else:
            taps = list(zip((base - 1, base, base + 1, base + 2), _cubic_coeffs(t)))
    out = []
    for i, w in taps:
        if padding_mode == "zeros":
            w = torch.where((i >= 0) & (i <= size - 1), w, torch.zeros_like(w))
        elif padding_mode == "reflection":
            i = torch.trunc(reflect(i, lo, hi))
        out.append((i.clamp(0, size - 1).long(), w))
    return out


def grid_sample_nd(x: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str, align_corners: bool):
    """ONNX GridSample on (N, C, *spatial) with grid (N, *out, nd); mode in nearest/linear/cubic."""
    n, c = x.shape[:2]
    spatial = list(x.shape[2:])
    nd = len(spatial)
    out_shape = list(grid.shape[1:-1])
    points = grid.reshape(n, -1, nd)
    per_dim = []
    for d, size in enumerate(spatial):
        # The grid's last axis lists coordinates innermost-dim first (x, y, z).
        v, lo, hi = pixel_coords(points[..., nd - 1 - d], size, align_corners)
        per_dim.append(_axis_taps(v, size, lo, hi, mode, padding_mode))
    flat = x.reshape(n, c, -1)
    strides = [1] * nd
    for d in range(nd - 2, -1, -1):
        strides[d] = strides[d + 1] * spatial[d + 1]
    y = None
    for combo in itertools.product(*per_dim):
        index = sum(i * s for (i, _), s in zip(combo, strides))
        weight = combo[0][1]
        for _, w in combo[1:]:
            weight = weight * w
        vals = torch.gather(flat, 2, index[:, None, :].expand(n, c, index.shape[1]))
        term = vals * weight[:, None, :]
        y = term if y is None else y + term
    return y.reshape([n, c] + out_shape)
