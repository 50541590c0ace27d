"""MaxRoiPool's binned max: masked maxima, separable over width then height.

Bins of one RoI have different integer extents, so each bin's extent becomes a boolean mask over the
feature map; RoIs are processed in chunks to bound the (RoI, C, H, bins, W) intermediate.
"""
from __future__ import annotations

import torch

_CHUNK_ELEMENTS = 1 << 26


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    # Caffe rounds RoI corners with C's round(), i.e. halves away from zero (torch.round goes to even).
    return torch.sign(v) * torch.floor(v.abs() + 0.5)


def _bin_masks(start, end, bins: int, size: int) -> torch.Tensor:
    """(R, bins, size) mask of the feature-map cells each bin covers."""
    extent = torch.clamp(end - start + 1, min=1)
    step = extent / bins
    b = torch.arange(bins, device=start.device, dtype=start.dtype)
    lo = torch.clamp(torch.floor(b[None] * step[:, None]) + start[:, None], 0, size)
    hi = torch.clamp(torch.ceil((b[None] + 1) * step[:, None]) + start[:, None], 0, size)
    cell = torch.arange(size, device=start.device, dtype=start.dtype)
    return (cell[None, None] >= lo[..., None]) & (cell[None, None] < hi[..., None])


def max_roi_pool(x: torch.Tensor, rois: torch.Tensor, pooled_shape, spatial_scale: float) -> torch.Tensor:
    ph, pw = pooled_shape
    r = rois.shape[0]
    n, c, h, w = x.shape
    if x.is_meta or rois.is_meta or r == 0:
        return torch.zeros(r, c, ph, pw, dtype=x.dtype, device=x.device)
    rois = rois.to(torch.float64)
    batch = rois[:, 0].long()
    corners = _round_half_away(rois[:, 1:] * spatial_scale)
    mask_w = _bin_masks(corners[:, 0], corners[:, 2], pw, w)  # (R, PW, W)
    mask_h = _bin_masks(corners[:, 1], corners[:, 3], ph, h)  # (R, PH, H)
    low = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, c * h * w * max(ph, pw)))
    outs = []
    for s in range(0, r, chunk):
        feats = x[batch[s:s + chunk]]  # (r, C, H, W)
        mw = mask_w[s:s + chunk]
        cols = torch.where(mw[:, None, None], feats[:, :, :, None, :], low).amax(dim=-1)  # (r, C, H, PW)
        mh = mask_h[s:s + chunk]
        cols = cols.transpose(2, 3)[:, :, None]  # (r, C, 1, PW, H)
        outs.append(torch.where(mh[:, None, :, None, :], cols, low).amax(dim=-1))  # (r, C, PH, PW)
    y = torch.cat(outs)
    # Empty bins (clipped away) yield 0, as in Caffe.
    empty = ~(mask_h.any(-1)[:, :, None] & mask_w.any(-1)[:, None, :])
    return torch.where(empty[:, None], torch.zeros_like(y), y)
