"""RoiAlign: bilinear samples on a per-RoI grid, averaged (or maxed) per output bin.

The sampling grid of a RoI is its own (sampling_ratio=0 adapts it to the RoI size), so all RoIs share
the largest grid and samples past a RoI's own grid are masked out. Average mode is separable: it becomes
row and column weight matrices contracted against the feature map; max mode gathers the corner values.
"""
from __future__ import annotations

import torch


def _axis_samples(start, extent, bins: int, grid, gmax: int, size: int):
    """Per RoI, bin and sample along one axis: (low, high, w_low, w_high), each (R, bins, gmax)."""
    dev, dt = start.device, start.dtype
    b = torch.arange(bins, device=dev, dtype=dt)[None, :, None]
    i = torch.arange(gmax, device=dev, dtype=dt)[None, None, :]
    step = (extent / bins)[:, None, None]
    g = grid.to(dt)[:, None, None]
    pos = start[:, None, None] + b * step + (i + 0.5) * step / g.clamp(min=1)
    valid = (i < g) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = torch.floor(pos)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    pos = torch.where(at_edge, low, pos)
    high = torch.where(at_edge, low, low + 1)
    frac = pos - low
    zero = torch.zeros_like(frac)
    w_low = torch.where(valid, 1 - frac, zero)
    w_high = torch.where(valid, frac, zero)
    return low.long(), high.long(), w_low, w_high


def _weight_matrix(low, high, w_low, w_high, size: int):
    """(R, bins, size): summed interpolation weight of each feature row/column over a bin's samples."""
    r, bins, g = low.shape
    m = torch.zeros(r, bins, size, dtype=w_low.dtype, device=w_low.device)
    m = m.scatter_add(2, low, w_low)
    return m.scatter_add(2, high, w_high)


def roi_align(x, rois, batch_indices, out_h: int, out_w: int, sampling_ratio: int, spatial_scale: float,
              mode: str, half_pixel: bool):
    n, c, h, w = x.shape
    r = rois.shape[0]
    if x.is_meta or rois.is_meta or batch_indices.is_meta or r == 0:
        return torch.zeros(r, c, out_h, out_w, dtype=x.dtype, device=x.device)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    boxes = rois.to(acc) * spatial_scale - (0.5 if half_pixel else 0.0)
    start_w, start_h, end_w, end_h = boxes.unbind(1)
    roi_w, roi_h = end_w - start_w, end_h - start_h
    if not half_pixel:
        # Legacy (output_half_pixel) mode forces malformed RoIs to 1x1.
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full((r,), sampling_ratio, device=x.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / out_h).long()
        grid_w = torch.ceil(roi_w / out_w).long()
    gh, gw = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)
    ys = _axis_samples(start_h, roi_h, out_h, grid_h, gh, h)
    xs = _axis_samples(start_w, roi_w, out_w, grid_w, gw, w)
    feats = x.to(acc)
    batch = batch_indices.long()
    if mode == "avg":
        count = (grid_h * grid_w).clamp(min=1).to(acc)
        rows = _weight_matrix(*ys, h)  # (R, out_h, H)
        cols = _weight_matrix(*xs, w)  # (R, out_w, W)
        # Rows of the batch's own image only: a one-hot over the batch turns it into one matmul.
        onehot = torch.nn.functional.one_hot(batch, n).to(acc)
        rows = (rows[:, :, None, :] * onehot[:, None, :, None]).reshape(r, out_h, n * h)
        z = torch.einsum("rpk,kcw->rcpw", rows, feats.permute(0, 2, 1, 3).reshape(n * h, c, w))
        y = torch.einsum("rcpw,rqw->rcpq", z, cols) / count[:, None, None, None]
        return y.to(x.dtype)
    if mode != "max":
        raise ValueError(f"RoiAlign: unknown mode {mode!r}")
    # ONNX's max mode takes the max over samples of the max over the 4 weighted corner values.
    flat = feats.permute(0, 2, 3, 1).reshape(n * h * w, c)
    ylo, yhi, wylo, wyhi = (t[:, :, :, None, None] for t in ys)
    xlo, xhi, wxlo, wxhi = (t[:, None, None, :, :] for t in xs)
    base = batch[:, None, None, None, None] * (h * w)
    best = None
    for yi, wy in ((ylo, wylo), (yhi, wyhi)):
        for xi, wx in ((xlo, wxlo), (xhi, wxhi)):
            vals = flat[(base + yi * w + xi).reshape(-1)].reshape(r, out_h, gh, out_w, gw, c)
            term = vals * (wy * wx)[..., None]
            best = term if best is None else torch.maximum(best, term)
    valid_h = torch.arange(gh, device=x.device)[None, :] < grid_h[:, None]
    valid_w = torch.arange(gw, device=x.device)[None, :] < grid_w[:, None]
    valid = valid_h[:, None, :, None, None, None] & valid_w[:, None, None, None, :, None]
    best = torch.where(valid, best, torch.full_like(best, float("-inf")))
    y = best.amax(dim=(2, 4))
    y = torch.where(torch.isneginf(y), torch.zeros_like(y), y)
    return y.permute(0, 3, 1, 2).to(x.dtype)
