"""Window geometry shared by Conv and the pools: resolving auto_pad/pads, output sizes, and explicit padding.

ONNX pads are ``[x1_begin, x2_begin, ..., x1_end, x2_end]``; torch's F.pad wants last-dim-first pairs, and
torch's conv/pool only take symmetric padding, so Kiln resolves the ONNX geometry here and pads explicitly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def window_attrs(attrs: dict, nd: int, kernel_shape=None):
    """(kernel, strides, dilations) with ONNX defaults for ``nd`` spatial dims."""
    kernel = list(attrs.get("kernel_shape") or kernel_shape)
    strides = list(attrs.get("strides") or [1] * nd)
    dilations = list(attrs.get("dilations") or [1] * nd)
    return kernel, strides, dilations


def effective_kernel(kernel, dilations) -> list[int]:
    return [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]


def resolve_pads(attrs: dict, in_shape, kernel, strides, dilations) -> list[int]:
    """Explicit begin/end pads for ``auto_pad`` (NOTSET uses the ``pads`` attribute)."""
    nd = len(in_shape)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for n, k, s in zip(in_shape, effective_kernel(kernel, dilations), strides):
            out = -(-n // s)
            total = max(0, (out - 1) * s + k - n)
            small, big = total // 2, total - total // 2
            # SAME_UPPER puts the odd extra pad at the end, SAME_LOWER at the beginning.
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
        return begin + end
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    pads = attrs.get("pads")
    return list(pads) if pads else [0] * (2 * nd)


def pooled_sizes(in_shape, kernel, strides, dilations, pads, ceil_mode: bool, auto_pad: str = "NOTSET"):
    """Output spatial sizes of a pooling window (ceil_mode keeps only windows starting inside input or left pad)."""
    nd = len(in_shape)
    out = []
    for i, (n, k, s) in enumerate(zip(in_shape, effective_kernel(kernel, dilations), strides)):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-n // s))
            continue
        span = n + pads[i] + pads[nd + i] - k
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= n + pads[i]:
            o -= 1
        out.append(max(o, 0))
    return out


def torch_pad(x: torch.Tensor, begin, end, value=0.0) -> torch.Tensor:
    """Pad (negative values crop) the trailing spatial dims of ``x``; begin/end in ONNX dim order."""
    if not any(begin) and not any(end):
        return x
    spec = []
    for b, e in zip(reversed(list(begin)), reversed(list(end))):
        spec += [int(b), int(e)]
    if x.dtype == torch.bool or not (x.is_floating_point() or x.is_complex()):
        value = int(value)
    return F.pad(x, spec, mode="constant", value=value)


def is_symmetric(pads) -> bool:
    nd = len(pads) // 2
    return list(pads[:nd]) == list(pads[nd:])


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["window_attrs", "effective_kernel", "resolve_pads", "pooled_sizes", "torch_pad", "is_symmetric",
           "ceil_div"]
