"""Sliding-window views for the pools: any rank, any dtype, dilations, ceil_mode, asymmetric pads.

The input is padded (or cropped) to exactly the extent the output windows cover, then unfolded into a
strided view (N, C, *out, *kernel) that reductions consume without materialising copies.
"""
from __future__ import annotations

import math

import torch

from .conv_padding import effective_kernel, pooled_sizes, resolve_pads, torch_pad, window_attrs


class PoolGeometry:
    """Resolved window geometry of one pooling node over input spatial shape ``in_shape``."""

    def __init__(self, attrs: dict, in_shape):
        self.nd = nd = len(in_shape)
        self.in_shape = list(in_shape)
        self.kernel, self.strides, self.dilations = window_attrs(attrs, nd)
        self.pads = resolve_pads(attrs, in_shape, self.kernel, self.strides, self.dilations)
        self.out = pooled_sizes(in_shape, self.kernel, self.strides, self.dilations, self.pads,
                                bool(attrs.get("ceil_mode", 0)), attrs.get("auto_pad", "NOTSET"))
        self.begin = self.pads[:nd]
        # End padding that makes the last window fit exactly (beyond the explicit pads under ceil_mode).
        self.end = [(o - 1) * s + k - n - b if o > 0 else -n - b
                    for o, s, k, n, b in zip(self.out, self.strides,
                                             effective_kernel(self.kernel, self.dilations), in_shape, self.begin)]

    def windows(self, x: torch.Tensor, fill=0.0) -> torch.Tensor:
        """(N, C, *out, *kernel) view of ``x`` padded with ``fill``."""
        return self._unfold(torch_pad(x, self.begin, self.end, fill))

    def torch_padding(self, x: torch.Tensor, fill):
        """(input, padding) for torch's pools: its own symmetric padding where it allows, else explicit.

        torch pads ``begin`` on both sides; that is exact whenever it yields our windows (same count,
        same starts): any of its padding the windows touch is padding for us too.
        """
        eff = effective_kernel(self.kernel, self.dilations)
        # (avg_pool3d also refuses inputs smaller than the kernel before padding.)
        same = all(2 * p <= min(k, e) and n >= e and (n + 2 * p - e) // s + 1 == o
                   for p, k, e, n, s, o in zip(self.begin, self.kernel, eff, self.in_shape, self.strides, self.out))
        if same:
            return x, self.begin
        return torch_pad(x, self.begin, self.end, fill), 0

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.dim() - self.nd
        for d in range(self.nd):
            k = (self.kernel[d] - 1) * self.dilations[d] + 1
            x = x.unfold(lead + d, k, self.strides[d])
            if self.dilations[d] > 1:
                x = x[..., :: self.dilations[d]]
        return x

    def counts(self, like: torch.Tensor, include_pad: bool) -> torch.Tensor:
        """Per output position, how many window elements the average divides by.

        count_include_pad counts the explicit pads but never the extra extent that ceil_mode adds.
        """
        nd = self.nd
        ones = torch.ones(self.in_shape, dtype=like.dtype, device=like.device)
        mask = torch_pad(ones, self.begin, self.pads[nd:], 1.0 if include_pad else 0.0)
        mask = torch_pad(mask, [0] * nd, [e - p for e, p in zip(self.end, self.pads[nd:])], 0.0)
        return self._unfold(mask).sum(dim=self.reduce_dims())

    def reduce_dims(self) -> tuple:
        return tuple(range(-self.nd, 0))

    def argmax_indices(self, x: torch.Tensor, storage_order: int) -> torch.Tensor:
        """Flat indices into ``x`` (ONNX MaxPool Indices) of each window's first maximum."""
        win = self.windows(x, lowest(x.dtype))
        local = win.flatten(-self.nd).argmax(dim=-1)  # (N, C, *out), row-major over the kernel dims
        dev = x.device
        flat = torch.zeros_like(local)
        coords = []
        for d in reversed(range(self.nd)):
            kd = local % self.kernel[d]
            local = local // self.kernel[d]
            pos = torch.arange(self.out[d], device=dev) * self.strides[d] - self.begin[d]
            pos = pos.reshape([-1] + [1] * (self.nd - 1 - d))
            coords.insert(0, pos + kd * self.dilations[d])
        order = range(self.nd) if storage_order == 0 else reversed(range(self.nd))
        for d in order:
            flat = flat * self.in_shape[d] + coords[d]
        n, c = x.shape[0], x.shape[1]
        nc = torch.arange(n * c, device=dev).reshape([n, c] + [1] * self.nd)
        return flat + nc * math.prod(self.in_shape)


def lowest(dtype: torch.dtype):
    if dtype.is_floating_point:
        return float("-inf")
    if dtype == torch.bool:
        return 0
    return torch.iinfo(dtype).min
