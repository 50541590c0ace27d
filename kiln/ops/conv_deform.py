"""DeformConv's sampling: bilinear gathers at offset kernel taps, then a grouped matmul with the weights.

torch has no deformable convolution (torchvision's is an extra dependency), so Kiln builds the sampled
columns itself: (N, C, kH*kW, oH*oW), with zero contribution from corners outside the image.
"""
from __future__ import annotations

import torch


def _bilinear_columns(x, ys, xs):
    """Sample x (N, G, Cg, H, W) at float coords ys/xs (N, G, K, P) -> (N, G, Cg, K, P); outside is zero."""
    n, g, cg, h, w = x.shape
    flat = x.reshape(n, g, cg, h * w)
    y0, x0 = torch.floor(ys), torch.floor(xs)
    out = None
    for dy in (0, 1):
        for dx in (0, 1):
            yi, xi = y0 + dy, x0 + dx
            weight = (1 - (ys - yi).abs()) * (1 - (xs - xi).abs())
            inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
            weight = torch.where(inside, weight, torch.zeros_like(weight))
            idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
            k, p = idx.shape[2], idx.shape[3]
            idx = idx.reshape(n, g, 1, k * p).expand(n, g, cg, k * p)
            vals = torch.gather(flat, 3, idx).reshape(n, g, cg, k, p)
            term = vals * weight.unsqueeze(2).to(vals.dtype)
            out = term if out is None else out + term
    return out


def deform_conv2d(x, w, offset, b, mask, kernel, strides, dilations, pads, group: int, offset_group: int):
    n, c, h, wd = x.shape
    oc = w.shape[0]
    kh, kw = kernel
    oh, ow = offset.shape[2], offset.shape[3]
    k = kh * kw
    dev, dt = x.device, x.dtype
    # Base sampling position of each kernel tap at each output position, before offsets.
    ky = (torch.arange(kh, device=dev) * dilations[0]).repeat_interleave(kw)
    kx = (torch.arange(kw, device=dev) * dilations[1]).repeat(kh)
    oy = torch.arange(oh, device=dev) * strides[0] - pads[0]
    ox = torch.arange(ow, device=dev) * strides[1] - pads[1]
    base_y = (ky[:, None, None] + oy[None, :, None]).expand(k, oh, ow).reshape(k, oh * ow)
    base_x = (kx[:, None, None] + ox[None, None, :]).expand(k, oh, ow).reshape(k, oh * ow)
    off = offset.reshape(n, offset_group, k, 2, oh * ow)
    ys = base_y.to(dt) + off[:, :, :, 0]
    xs = base_x.to(dt) + off[:, :, :, 1]
    cols = _bilinear_columns(x.reshape(n, offset_group, c // offset_group, h, wd), ys, xs)
    if mask is not None:
        cols = cols * mask.reshape(n, offset_group, 1, k, oh * ow)
    # Regroup input channels by conv group and contract (channel, tap) against the weights.
    cols = cols.reshape(n, group, (c // group) * k, oh * ow)
    wg = w.reshape(group, oc // group, (c // group) * k)
    y = torch.einsum("gok,ngkp->ngop", wg, cols).reshape(n, oc, oh, ow)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y
