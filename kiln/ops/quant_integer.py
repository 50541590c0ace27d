"""Integer and quantized-linear matmul / conv: MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv.

Integer products are accumulated in float64, which holds every int8/uint8 dot product exactly
(up to 2**53) and runs on any device, where torch has no integer matmul / conv on CUDA.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .registry import KernelContext

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _centered(x: torch.Tensor, zp: torch.Tensor | None, per_row: bool = False) -> torch.Tensor:
    """x - zero_point in float64; a 1-D zero point of the row count applies per row (ONNX 'a' inputs)."""
    x = x.to(torch.float64)
    if zp is None:
        return x
    zp = zp.to(torch.float64)
    if per_row and zp.dim() == 1 and zp.numel() > 1 and x.dim() >= 2:
        zp = zp.reshape(-1, 1)
    return x - zp


def _per_row(p: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return p.reshape(-1, 1) if p.dim() == 1 and p.numel() > 1 and a.dim() >= 2 else p


def _to_int32(acc: torch.Tensor) -> torch.Tensor:
    # Accumulation may wrap only at 32 bits, as the spec allows.
    return torch.round(acc).to(torch.int64).to(torch.int32)


def _requantize(acc: torch.Tensor, multiplier: torch.Tensor, y_zp: torch.Tensor | None,
                out_dtype: torch.dtype) -> torch.Tensor:
    v = acc * multiplier.to(torch.float64)
    if y_zp is not None:
        v = v + y_zp.to(torch.float64)
    info = torch.iinfo(out_dtype)
    return torch.clamp(torch.round(v), info.min, info.max).to(out_dtype)


def matmul_integer(ctx: KernelContext, inputs: list, attrs: dict):
    """int32 matmul of (A - a_zero_point) and (B - b_zero_point); a 1-D a_zero_point is per row."""
    a, b = inputs[0], inputs[1]
    a_zp = inputs[2] if len(inputs) > 2 else None
    b_zp = inputs[3] if len(inputs) > 3 else None
    return _to_int32(torch.matmul(_centered(a, a_zp, per_row=True), _centered(b, b_zp)))


def qlinear_matmul(ctx: KernelContext, inputs: list, attrs: dict):
    """Quantized matmul: requantize (a - a_zp) @ (b - b_zp) by a_scale * b_scale / y_scale."""
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = (list(inputs) + [None] * 8)[:8]
    acc = torch.matmul(_centered(a, a_zp, per_row=True), _centered(b, b_zp))
    # The multiplier is formed in the scales' own precision, then applied in float64, like ONNX's reference.
    multiplier = _per_row(a_scale, a) * b_scale / y_scale
    out = y_zp.dtype if y_zp is not None else a.dtype
    return _requantize(acc, multiplier, y_zp, out)


def _conv_pads(attrs: dict, spatial: list[int], kernel: list[int], strides: list[int],
               dilations: list[int]) -> list[int]:
    """Begin pads then end pads per spatial axis, resolving auto_pad."""
    n = len(spatial)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else total - small)
            ends.append(total - begins[-1])
        return begins + ends
    if auto_pad == "VALID":
        return [0] * (2 * n)
    return list(attrs.get("pads", [0] * (2 * n)))


def _int_conv(x: torch.Tensor, w: torch.Tensor, attrs: dict) -> torch.Tensor:
    """Convolution of float64 tensors holding integers (zero points already removed)."""
    n = x.dim() - 2
    if n not in _CONV:
        raise NotImplementedError(f"integer convolution over {n} spatial axes is not supported")
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    pads = _conv_pads(attrs, list(x.shape[2:]), kernel, strides, dilations)
    # F.pad lists the last axis first; zero padding here means padding with the zero point.
    torch_pads = []
    for i in reversed(range(n)):
        torch_pads += [pads[i], pads[i + n]]
    if any(torch_pads):
        x = F.pad(x, torch_pads)
    return _CONV[n](x, w, stride=strides, dilation=dilations, groups=attrs.get("group", 1))


def _per_channel(p: torch.Tensor, rank: int) -> torch.Tensor:
    """A 1-D per-output-channel parameter shaped to broadcast over (N, M, spatial...)."""
    return p.reshape([1, -1] + [1] * (rank - 2)) if p.dim() == 1 and p.numel() > 1 else p.reshape(())


def _centered_weights(w: torch.Tensor, w_zp: torch.Tensor | None) -> torch.Tensor:
    w = w.to(torch.float64)
    if w_zp is None:
        return w
    zp = w_zp.to(torch.float64)
    zp = zp.reshape(()) if zp.numel() == 1 else zp.reshape([-1] + [1] * (w.dim() - 1))
    return w - zp


def conv_integer(ctx: KernelContext, inputs: list, attrs: dict):
    """int32 convolution of (x - x_zero_point) with (w - w_zero_point); w_zero_point may be per channel."""
    x, w = inputs[0], inputs[1]
    x_zp = inputs[2] if len(inputs) > 2 else None
    w_zp = inputs[3] if len(inputs) > 3 else None
    xc = x.to(torch.float64) - (x_zp.to(torch.float64).reshape(()) if x_zp is not None else 0.0)
    return _to_int32(_int_conv(xc, _centered_weights(w, w_zp), attrs))


def qlinear_conv(ctx: KernelContext, inputs: list, attrs: dict):
    """Quantized convolution with optional int32 bias, requantized by x_scale * w_scale / y_scale."""
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias = (list(inputs) + [None] * 9)[:9]
    xc = x.to(torch.float64) - (x_zp.to(torch.float64).reshape(()) if x_zp is not None else 0.0)
    acc = _int_conv(xc, _centered_weights(w, w_zp), attrs)
    if bias is not None:
        acc = acc + _per_channel(bias.to(torch.float64), acc.dim())
    multiplier = x_scale.reshape(()) * _per_channel(w_scale, acc.dim()) / y_scale.reshape(())
    out = y_zp.dtype if y_zp is not None else x.dtype
    return _requantize(acc, multiplier, y_zp, out)
