"""Ops of the 'conv' family: Conv, ConvTranspose, DeformConv, Col2Im, CausalConvWithState.

Conv and ConvTranspose run on torch's F.conv*/F.conv_transpose* (1-D to 3-D); ONNX's asymmetric pads and
auto_pad are resolved in conv_padding and applied as explicit padding (or cropping) around the torch call.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .conv_deform import deform_conv2d
from .conv_padding import effective_kernel, is_symmetric, resolve_pads, torch_pad, window_attrs
from .registry import OpSet

ops = OpSet("conv")

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _spatial_rank(x: torch.Tensor, op: str) -> int:
    nd = x.dim() - 2
    if nd not in _CONV:
        raise NotImplementedError(f"{op} with {nd} spatial dims: Kiln supports 1-D to 3-D")
    return nd


@ops.op("Conv")
def conv(ctx, inputs, attrs):
    """N-D convolution with groups, dilations, strides, explicit or automatic (SAME_*/VALID) padding."""
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    nd = x.dim() - 2
    kernel, strides, dilations = window_attrs(attrs, nd, w.shape[2:])
    pads = resolve_pads(attrs, x.shape[2:], kernel, strides, dilations)
    if nd not in _CONV:
        return _conv_unfolded(x, w, b, strides, dilations, pads, attrs.get("group", 1))
    if small_conv1d(x, w, strides, dilations, pads, attrs.get("group", 1)):
        return conv1d_as_matmul(x, w, b, strides[0], pads[0], pads[1])
    if is_symmetric(pads):
        padding = pads[:nd]
    else:
        x, padding = torch_pad(x, pads[:nd], pads[nd:]), 0
    return _CONV[nd](x, w, b, stride=strides, padding=padding, dilation=dilations, groups=attrs.get("group", 1))


# A 1-D convolution with few output positions and a long reduction is a small matrix product; torch's CPU
# convolution spends 40-80 us on such a layer where the product of its unfolded windows takes 15-20 (one thread,
# 2-core VM, 2026-12-07: a voice-activity model's STFT and encoder layers, [1,1,640]*[258,1,256] stride 128: 83 vs
# 21 us; [1,129,4]*[128,129,3]: 68 vs 21). Below these sizes the two are level, so the rule is narrow.
SMALL_CONV1D_MAX_ROWS = 16  # batch * output positions
SMALL_CONV1D_MIN_REDUCTION = 256  # input channels * kernel width


def small_conv1d(x: torch.Tensor, w: torch.Tensor, strides, dilations, pads, group: int) -> bool:
    """Whether this CPU float32 1-D convolution runs faster as one matrix product (see above)."""
    if x.dim() != 3 or x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32 \
            or group != 1 or dilations[0] != 1:
        return False
    out_len = (x.shape[2] + pads[0] + pads[1] - w.shape[2]) // strides[0] + 1
    return 0 < x.shape[0] * out_len <= SMALL_CONV1D_MAX_ROWS and w.shape[1] * w.shape[2] >= SMALL_CONV1D_MIN_REDUCTION


def conv1d_as_matmul(x: torch.Tensor, w: torch.Tensor, b, stride: int, pad_begin: int, pad_end: int) -> torch.Tensor:
    """conv1d as [N*L, C*K] @ [C*K, Cout] over the unfolded windows (zero padding first), + bias."""
    if pad_begin or pad_end:
        x = F.pad(x, (pad_begin, pad_end))
    cols = x.unfold(2, w.shape[2], stride)  # [N, C, L, K]
    n, c, length, k = cols.shape
    rows = cols.permute(0, 2, 1, 3).reshape(n * length, c * k)
    wt = w.reshape(w.shape[0], c * k).t()
    y = torch.mm(rows, wt) if b is None else torch.addmm(b, rows, wt)
    return y.view(n, length, -1).permute(0, 2, 1).contiguous()


def _conv_unfolded(x, w, b, strides, dilations, pads, group: int):
    """Convolution of any spatial rank (torch stops at 3-D): unfold windows, contract per group."""
    nd = x.dim() - 2
    x = torch_pad(x, pads[:nd], pads[nd:])
    for d in range(nd):
        x = x.unfold(2 + d, (w.shape[2 + d] - 1) * dilations[d] + 1, strides[d])
        if dilations[d] > 1:
            x = x[..., :: dilations[d]]
    n, c, out = x.shape[0], x.shape[1], list(x.shape[2:2 + nd])
    cols = x.reshape(n, group, c // group, math.prod(out), math.prod(w.shape[2:]))
    wg = w.reshape(group, w.shape[0] // group, c // group, -1)
    y = torch.einsum("ngcok,gmck->ngmo", cols, wg).reshape([n, w.shape[0]] + out)
    return y if b is None else y + b.reshape([1, -1] + [1] * nd)


@ops.op("ConvTranspose")
def conv_transpose(ctx, inputs, attrs):
    """Transposed convolution; output_shape/auto_pad/pads/output_padding per the ONNX shape rules."""
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    nd = _spatial_rank(x, "ConvTranspose")
    kernel, strides, dilations = window_attrs(attrs, nd, w.shape[2:])
    in_shape = list(x.shape[2:])
    out_pad = list(attrs.get("output_padding") or [0] * nd)
    full = [s * (n - 1) + k for s, n, k in zip(strides, in_shape, effective_kernel(kernel, dilations))]
    auto_pad = attrs.get("auto_pad", "NOTSET")
    out_shape = attrs.get("output_shape")
    if out_shape:
        out_shape = list(out_shape)[-nd:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out_shape = [n * s for n, s in zip(in_shape, strides)]
    if out_shape:
        begin, end = [], []
        for f, op_, o in zip(full, out_pad, out_shape):
            total = f + op_ - o
            small, big = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
    else:
        pads = list(attrs.get("pads") or [0] * (2 * nd))
        begin, end = pads[:nd], pads[nd:]
    y = _CONV_T[nd](x, w, None, stride=strides, dilation=dilations, groups=attrs.get("group", 1))
    # The full (unpadded) result is cropped by the pads; output_padding extends the end with zeros.
    y = torch_pad(y, [-p for p in begin], [op_ - p for op_, p in zip(out_pad, end)])
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * nd)
    return y


@ops.op("DeformConv")
def deform_conv(ctx, inputs, attrs):
    """Deformable 2-D convolution: bilinear samples at learned offsets, optional modulation mask."""
    x, w, offset = inputs[0], inputs[1], inputs[2]
    b = inputs[3] if len(inputs) > 3 else None
    mask = inputs[4] if len(inputs) > 4 else None
    if x.dim() != 4:
        raise NotImplementedError("DeformConv: Kiln supports 2-D inputs (N, C, H, W) only")
    kernel, strides, dilations = window_attrs(attrs, 2, w.shape[2:])
    pads = list(attrs.get("pads") or [0, 0, 0, 0])
    return deform_conv2d(x, w, offset, b, mask, kernel, strides, dilations, pads,
                         attrs.get("group", 1), attrs.get("offset_group", 1))


@ops.op("Col2Im")
def col2im(ctx, inputs, attrs):
    """Rearranges column blocks back into an image, summing overlaps (the inverse of Im2Col)."""
    x, image_shape, block_shape = inputs
    image = [int(v) for v in image_shape.tolist()]
    block = [int(v) for v in block_shape.tolist()]
    nd = len(image)
    strides = list(attrs.get("strides") or [1] * nd)
    dilations = list(attrs.get("dilations") or [1] * nd)
    pads = list(attrs.get("pads") or [0] * (2 * nd))
    n, ck, length = x.shape
    k = math.prod(block)
    if nd == 2 and pads[:2] == pads[2:]:
        return F.fold(x, image, block, dilation=dilations, padding=pads[:2], stride=strides)
    # General N-D: scatter-add each (kernel offset, block position) into the padded image.
    padded = [i + pads[d] + pads[nd + d] for d, i in enumerate(image)]
    blocks = [(p - ((kb - 1) * d + 1)) // s + 1 for p, kb, d, s in zip(padded, block, dilations, strides)]
    dev = x.device
    # Each (kernel offset, block position) maps to one flat coordinate of the padded image.
    kgrid = torch.meshgrid(*[torch.arange(v, device=dev) for v in block], indexing="ij")
    bgrid = torch.meshgrid(*[torch.arange(v, device=dev) for v in blocks], indexing="ij")
    index = torch.zeros(k, length, dtype=torch.int64, device=dev)
    for d in range(nd):
        coord = kgrid[d].reshape(-1, 1) * dilations[d] + bgrid[d].reshape(1, -1) * strides[d]
        index = index * padded[d] + coord
    cols = x.reshape(n, ck // k, k * length)
    out = torch.zeros(n, ck // k, math.prod(padded), dtype=x.dtype, device=dev)
    out = out.index_add(2, index.reshape(-1), cols)
    out = out.reshape(n, ck // k, *padded)
    return torch_pad(out, [-p for p in pads[:nd]], [-p for p in pads[nd:]])


@ops.op("CausalConvWithState")
def causal_conv_with_state(ctx, inputs, attrs):
    """Depthwise causal 1-D conv over [past_state, input]; returns output and the last k-1 positions as state."""
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    past = inputs[3] if len(inputs) > 3 else None
    activation = attrs.get("activation", "none")
    if activation not in ("none", "silu", "swish"):
        raise ValueError(f"CausalConvWithState: unknown activation {activation!r}")
    batch, channels, _ = x.shape
    k = w.shape[2]
    if past is None:
        past = torch.zeros(batch, channels, k - 1, dtype=x.dtype, device=x.device)
    padded = torch.cat([past, x], dim=2)
    y = F.conv1d(padded, w, b, groups=channels)
    if activation != "none":
        y = F.silu(y.float()).to(x.dtype)
    return y, padded[:, :, padded.shape[2] - (k - 1):]
