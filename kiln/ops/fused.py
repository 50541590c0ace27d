"""Kiln's own fused layers (domain ``kiln``), produced by the builder's fusion passes.

Every fused layer is described by plain attributes (an engine stores the description, never code):
- ``kiln::Conv(X, W, B?, extra...)``: ONNX Conv attributes plus ``epilogue``.
- ``kiln::Linear(X, W[N,K], B?, extra...)``: X @ W^T + B, then ``epilogue`` (MatMul/Gemm with constant weights).
- ``kiln::Attention(Q, Kt, V, mask?)``: softmax(Q @ Kt * scale + mask) @ V, through scaled_dot_product_attention.
  With ``heads: H`` the operands are [b, s, H*D] (K not transposed) and so is the result: the layer splits and
  merges the heads itself. With ``nan_to_zero: 1`` rows whose probabilities are NaN (every key masked) give 0,
  as exporters' safe-softmax (Where(IsNaN(p), 0, p)) does.
- ``kiln::Elementwise(inputs...)``: a chain of elementwise ONNX ops, ``program`` lists them in order.

The epilogue steps and program lines are records of kiln/ops/fused_steps.py, the one module that reads or
writes their text (and the place to add a step): its ``apply_epilogue`` runs a layer's epilogue here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .conv import conv1d_as_matmul, small_conv1d
from .fused_steps import apply_epilogue, layer_label, parse_program
from .registry import KernelContext, OpSet

ops = OpSet("fused")


def _conv_label(node) -> str:
    w = node.inputs[1].const
    base = f"torch.conv{w.dim() - 2 if w is not None else 2}d"
    return layer_label(base + "[nhwc]" if node.attrs.get("channels_last") else base, node)


def _linear_label(node) -> str:
    return layer_label("torch.linear", node)


def _attention_label(node) -> str:
    return "torch.scaled_dot_product_attention"


def _elementwise_label(node) -> str:
    return f"elementwise[{'+'.join(line.op for line, _ in parse_program(node.attrs['program']))}]"


def _conv_pads(attrs: dict, spatial: int) -> tuple[list[int] | None, list[int]]:
    pads = list(attrs.get("pads", [0] * (2 * spatial)))
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return None, begin
    # torch pads symmetric only: pad the input explicitly (F.pad takes last dim first).
    explicit = []
    for b, e in zip(reversed(begin), reversed(end)):
        explicit += [b, e]
    return explicit, [0] * spatial


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def cudnn_conv_into(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b, stride, padding, dilation,
                    groups: int) -> bool:
    """cuDNN convolution computed straight into ``out`` (+ bias in place); False when cuDNN cannot take it
    (then the caller runs its usual path). ``out`` must be dense in the input's memory format."""
    if not (x.is_cuda and torch.backends.cudnn.enabled and x.dim() == 4 and x.dtype == w.dtype == out.dtype
            and x.dtype in (torch.float16, torch.bfloat16, torch.float32)):
        return False
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    if not (out.is_contiguous(memory_format=fmt) and w.is_contiguous(memory_format=fmt)):
        return False
    torch.ops.aten.cudnn_convolution.out(x, w, list(padding), list(stride), list(dilation), groups,
                                         torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                                         torch.backends.cudnn.allow_tf32, out=out)
    if b is not None:
        out.add_(b.reshape(1, -1, 1, 1))
    return True


@ops.op("Conv", domain="kiln", label=_conv_label)
def fused_conv(ctx: KernelContext, inputs: list, attrs: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """Convolution with explicit pads (resolved at build), bias and epilogue. On CUDA it can compute into
    ``out`` (an arena buffer); elsewhere it returns its own tensor."""
    x, w, b = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
    spatial = w.dim() - 2
    explicit, pads = _conv_pads(attrs, spatial)
    if explicit is not None:
        x = F.pad(x, explicit)
    if attrs.get("channels_last", 0) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    stride, dil, groups = attrs.get("strides", [1] * spatial), attrs.get("dilations", [1] * spatial), \
        attrs.get("group", 1)
    if out is not None and cudnn_conv_into(out, x, w, b, stride, pads, dil, groups):
        y = out
    elif spatial == 1 and small_conv1d(x, w, stride, dil, pads * 2, groups):  # see kiln/ops/conv.py
        y = conv1d_as_matmul(x, w, b, stride[0], pads[0], pads[0])
    else:
        y = _CONV[spatial](x, w, b, stride=stride, padding=pads, dilation=dil, groups=groups)
    return apply_epilogue(y, attrs.get("epilogue", []), inputs)


fused_conv.accepts_out = ("cuda",)


def linear_into(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b) -> bool:
    """x @ W^T + b computed straight into ``out`` (a dense buffer of the result's shape)."""
    dt = x.dtype
    if out.dtype != dt or w.dtype != dt or (b is not None and b.dtype != dt) or not out.is_contiguous():
        return False
    # a 2-D x (a batch of rows) needs no reshaped views: this runs per layer and inference, views cost ~0.5 us each
    x2, o2 = (x, out) if x.dim() == 2 else (x.reshape(-1, x.shape[-1]), out.view(-1, out.shape[-1]))
    if b is None:
        torch.mm(x2, w.t(), out=o2)
    else:
        torch.addmm(b, x2, w.t(), out=o2)
    return True


@ops.op("Linear", domain="kiln", label=_linear_label)
def fused_linear(ctx: KernelContext, inputs: list, attrs: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W^T + b with W stored [N, K] (what cuBLAS/oneDNN want), then the epilogue; into ``out`` if given."""
    x, w, b = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
    y = out if out is not None and linear_into(out, x, w, b) else F.linear(x, w, b)
    return apply_epilogue(y, attrs.get("epilogue", []), inputs)


fused_linear.accepts_out = ("cpu", "cuda")


@ops.op("Attention", domain="kiln", label=_attention_label)
def fused_attention(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    """softmax(Q @ Kt * scale + mask) @ V; Kt is K already transposed (as exporters produce it)."""
    q, kt, v = inputs[0], inputs[1], inputs[2]
    mask = inputs[3] if len(inputs) > 3 else None
    heads = attrs.get("heads")
    if heads:  # [b, s, H*D] -> [b, H, s, D]
        q, k, v = (t.unflatten(-1, (int(heads), -1)).transpose(1, 2) for t in (q, kt, v))
    else:
        k = kt.transpose(-1, -2)
    if mask is not None and mask.dtype != q.dtype and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q, k, v = (t.expand(*batch, *t.shape[-2:]) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=float(attrs["scale"]))
    if attrs.get("nan_to_zero"):
        y = torch.nan_to_num(y, nan=0.0, posinf=float("inf"), neginf=float("-inf"))
    if heads:  # [b, H, s, Dv] -> [b, s, H*Dv]
        y = y.transpose(1, 2).flatten(-2)
    return y


@ops.op("Elementwise", domain="kiln", label=_elementwise_label)
def fused_elementwise(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    """Runs ``program``: lines "Op(a,b)" whose operands are region inputs (iN) or earlier results (tN).

    The ops' own kernels compute each step, so the region means exactly what the ONNX nodes meant.
    """
    from . import default_registry
    reg = default_registry()
    temps: list = []
    for line, a in parse_program(attrs["program"], attrs.get("attrs", [])):
        args = [inputs[r.index] if r.kind == "i" else temps[r.index] for r in line.args]
        out = reg.get("", line.op).kernel(ctx, args, a)
        temps.append(out if isinstance(out, torch.Tensor) else out[0])
    return temps[-1]
