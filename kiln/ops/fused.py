"""Kiln's own fused layers (domain ``kiln``), produced by the builder's fusion passes.

Every fused layer is described by plain attributes (an engine stores the description, never code):
- ``kiln::Conv(X, W, B?, extra...)``: ONNX Conv attributes plus ``epilogue``.
- ``kiln::Linear(X, W[N,K], B?, extra...)``: X @ W^T + B, then ``epilogue`` (MatMul/Gemm with constant weights).
- ``kiln::Attention(Q, Kt, V, mask?)``: softmax(Q @ Kt * scale + mask) @ V, through scaled_dot_product_attention.
  With ``heads: H`` the operands are [b, s, H*D] (K not transposed) and so is the result: the layer splits and
  merges the heads itself. With ``nan_to_zero: 1`` rows whose probabilities are NaN (every key masked) give 0,
  as exporters' safe-softmax (Where(IsNaN(p), 0, p)) does.
- ``kiln::Elementwise(inputs...)``: a chain of elementwise ONNX ops, ``program`` lists them in order.

An epilogue is a list of steps applied in order to the layer's own (fresh) output, in place:
``"relu"``, ``"sigmoid"``, ``"tanh"``, ``"gelu"``, ``"gelu_tanh"``, ``"silu"``, ``"leaky_relu:A"``,
``"elu:A"``, ``"clip:LO:HI"``, ``"hardsigmoid:A:B"``, ``"hardswish"``, ``"softplus"``, ``"add:I"`` (add input I,
a residual), ``"mul:I"``, ``"addq:I:S"`` (add input I stored 8-bit, with scale S: I * S; made by the fp8
chains of kiln/quant/rewrite.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import KernelContext, OpSet

ops = OpSet("fused")

ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "silu", "leaky_relu", "elu", "clip", "hardsigmoid",
               "hardswish", "softplus")


def layer_label(base: str, node, bias_slot: int = 2) -> str:
    """A GEMM/convolution layer's kernel name for the build report: its base kernel, then "+bias" and one
    "+step" per epilogue step ("+residual" for an added tensor), e.g. "torch.conv2d+bias+relu"."""
    if len(node.inputs) > bias_slot and node.inputs[bias_slot] is not None:
        base += "+bias"
    for step in node.attrs.get("epilogue", []):
        base += "+" + ("residual" if step.startswith("add:") else step.split(":")[0])
    return base


def _conv_label(node) -> str:
    w = node.inputs[1].const
    base = f"torch.conv{w.dim() - 2 if w is not None else 2}d"
    return layer_label(base + "[nhwc]" if node.attrs.get("channels_last") else base, node)


def _linear_label(node) -> str:
    return layer_label("torch.linear", node)


def _attention_label(node) -> str:
    return "torch.scaled_dot_product_attention"


def _elementwise_label(node) -> str:
    return f"elementwise[{'+'.join(p.split('(')[0] for p in node.attrs['program'])}]"


def apply_epilogue(y: torch.Tensor, epilogue: list[str], inputs: list) -> torch.Tensor:
    for step in epilogue:
        name, *p = step.split(":")
        if name == "relu":
            y = y.relu_()
        elif name == "add":
            y = y.add_(inputs[int(p[0])])
        elif name == "mul":
            y = y.mul_(inputs[int(p[0])])
        elif name == "addq":  # 8-bit codes (zero point 0) dequantized in float32, then added
            y = y.add_(inputs[int(p[0])].to(torch.float32) * float(p[1]))
        elif name == "sigmoid":
            y = y.sigmoid_()
        elif name == "tanh":
            y = y.tanh_()
        elif name == "gelu":
            y = torch.ops.aten.gelu_(y)
        elif name == "gelu_tanh":
            y = torch.ops.aten.gelu_(y, approximate="tanh")
        elif name == "silu":
            y = F.silu(y, inplace=True)
        elif name == "leaky_relu":
            y = F.leaky_relu_(y, float(p[0]))
        elif name == "elu":
            y = F.elu_(y, float(p[0]))
        elif name == "clip":
            lo = None if p[0] == "" else float(p[0])
            hi = None if p[1] == "" else float(p[1])
            y = y.clamp_(lo, hi)
        elif name == "hardsigmoid":
            a, b = float(p[0]), float(p[1])
            y = y.mul_(a).add_(b).clamp_(0, 1)
        elif name == "hardswish":
            y = F.hardswish(y, inplace=True)
        elif name == "softplus":
            y = F.softplus(y)
        else:
            raise ValueError(f"unknown epilogue step {step!r}")
    return y


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
    else:
        y = _CONV[spatial](x, w, b, stride=stride, padding=pads, dilation=dil, groups=groups)
    return apply_epilogue(y, attrs.get("epilogue", []), inputs)


fused_conv.accepts_out = ("cuda",)


def linear_into(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b) -> bool:
    """x @ W^T + b computed straight into ``out`` (a dense buffer of the result's shape)."""
    if not out.is_contiguous() or out.dtype != x.dtype or w.dtype != x.dtype or (b is not None and b.dtype != x.dtype):
        return False
    x2, o2 = x.reshape(-1, x.shape[-1]), out.view(-1, out.shape[-1])
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
    sub_attrs = attrs.get("attrs", [])
    for i, line in enumerate(attrs["program"]):
        op, _, rest = line.partition("(")
        args = [inputs[int(a[1:])] if a[0] == "i" else temps[int(a[1:])] for a in rest.rstrip(")").split(",") if a]
        a = decode_sub_attrs(sub_attrs[i]) if i < len(sub_attrs) else {}
        out = reg.get("", op).kernel(ctx, args, a)
        temps.append(out if isinstance(out, torch.Tensor) else out[0])
    return temps[-1]


def decode_sub_attrs(items: list[str]) -> dict:
    """Sub-node attributes are stored as "name=kind:value" strings (kind i, f or s)."""
    out = {}
    for item in items:
        name, _, rest = item.partition("=")
        kind, _, val = rest.partition(":")
        out[name] = int(val) if kind == "i" else float(val) if kind == "f" else val
    return out

