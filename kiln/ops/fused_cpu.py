"""CPU tactics for kiln::Conv and kiln::Linear: oneDNN with weights reordered once and the epilogue run as
oneDNN post-ops (what PyTorch Inductor's CPU backend runs after freezing).

A tactic is chosen per layer by the tuner (kiln/tune) and made when an Engine binds its constants. The engine
file keeps the plain weights, so it stays portable and data-only; the reordered weights live in the tactic's
kernel, one set per loaded engine, shared by its contexts (they are only read). oneDNN's best weight layout
depends on the input shape (a layout reordered for the wrong shape can run 10x slower), so a weight is
reordered on the first run at each input shape, for up to ``MAX_SHAPES`` shapes per layer; past that the
dense weight is passed and oneDNN reorders it per call. A tactic kernel has the ordinary kernel signature
and ignores the layer's weight and bias inputs. Layers a tactic cannot take keep the plain kernels of
fused.py, which are also the oracle the tests check every tactic against.

A 1x1 convolution can also run as a oneDNN matmul on the NHWC activations (``conv1x1_gemm_tactic``, the
"onednn_gemm" tactic; ``prefers_gemm`` says when it is the default).

Epilogue steps map onto oneDNN post-ops as one activation, a residual add, or (convolution only) a residual
add then ReLU, which is what torch's fused oneDNN ops accept; whatever follows runs as the plain epilogue
after the oneDNN call. The reordered copies cost one more set of weights in memory per input shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .fused import _conv_pads
from .fused_steps import Activation, AddInput, Step, apply_epilogue, apply_steps, parse_epilogue

Kernel = Callable

MAX_SHAPES = 2  # reordered weight copies kept per layer (one per input shape seen)


@dataclass(frozen=True)
class Tactic:
    name: str  # what the report and tests call it, e.g. "onednn_conv[relu]"
    kernel: Kernel


def _available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise") \
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except Exception:  # noqa: BLE001 - a torch without these ops simply has no CPU tactics
        return False


def _dtype_ok(dtype: torch.dtype) -> bool:
    """oneDNN's CPU convolution and matmul take float32 anywhere and bfloat16 where the CPU computes it natively
    (AVX512-BF16, AMX): reduced-precision (bf16) engines get the same reordered-weight kernels as float32 ones."""
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and _native_bf16()


def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an older torch: float32 only
        return False


def _unary(step: Step) -> tuple[str, list, str] | None:
    """One epilogue step as oneDNN's (attr, scalars, algorithm), or None when it has no post-op."""
    if not isinstance(step, Activation):
        return None
    name, p = step.name, step.params
    # oneDNN's relu and clip ("hardtanh") post-ops turn NaN into 0 (max/min drop it); ONNX and torch keep
    # NaN, so those steps run as the plain in-place epilogue after the oneDNN call (one pass over the output).
    if name in ("sigmoid", "tanh", "hardswish"):
        return name, [], ""
    if name == "silu":
        return "swish", [], ""
    if name == "gelu":
        return "gelu", [], "none"
    if name == "gelu_tanh":
        return "gelu", [], "tanh"
    if name == "leaky_relu":
        return "leaky_relu", [float(p[0])], ""
    return None


def split_epilogue(epilogue) -> tuple[int | None, tuple | None, tuple[Step, ...]]:
    """``epilogue`` (its strings, or records) as (residual input index or None, unary post-op or None,
    remaining plain steps as records, bound once with the tactic).

    A residual add is oneDNN's binary post-op; torch's fused op could follow it only with ReLU, which
    drops NaN (see ``_unary``), so whatever follows an add runs as plain steps."""
    rest = parse_epilogue(epilogue)
    if rest and isinstance(rest[0], AddInput):
        return rest[0].input, None, rest[1:]
    unary = _unary(rest[0]) if rest else None
    if unary is not None:
        rest = rest[1:]
    return None, unary, rest


class _PerShape:
    """A weight reordered for each input shape seen (up to MAX_SHAPES), else the dense weight."""

    __slots__ = ("reorder", "dense", "by_shape")

    def __init__(self, reorder: Callable, dense: torch.Tensor):
        self.reorder, self.dense, self.by_shape = reorder, dense, {}

    def get(self, shape: torch.Size) -> torch.Tensor:
        w = self.by_shape.get(shape)
        if w is None:
            if len(self.by_shape) >= MAX_SHAPES:
                return self.dense
            w = self.by_shape[shape] = self.reorder(shape)
        return w


def _rows(shape) -> int:
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows


def conv_tactic(node, constants: dict) -> Tactic | None:
    """oneDNN 2-D convolution with a reordered weight, NHWC activations and the epilogue as post-ops."""
    w = constants.get(node.inputs[1].id) if node.inputs[1] is not None else None
    if w is None or w.dim() != 4 or not _dtype_ok(w.dtype) or w.device.type != "cpu":
        return None
    b_v = node.inputs[2] if len(node.inputs) > 2 else None
    b = None if b_v is None else constants.get(b_v.id)
    if b_v is not None and (b is None or b.dtype != w.dtype):
        return None
    attrs = node.attrs
    explicit, pads = _conv_pads(attrs, 2)
    strides, dil, groups = list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1])), \
        int(attrs.get("group", 1))
    dense = w.contiguous()
    weight = _PerShape(lambda shape: torch.ops.mkldnn._reorder_convolution_weight(
        dense, pads, strides, dil, groups, list(shape)), dense)
    bias = None if b is None else b.contiguous()
    add, unary, rest = split_epilogue(attrs.get("epilogue", []))
    u_attr, u_scalars, u_alg = unary if unary is not None else ("none" if add is None else None, [], "")
    conv = torch.ops.mkldnn._convolution_pointwise.default
    conv_add = torch.ops.mkldnn._convolution_pointwise.binary

    if add is None:
        def kernel(ctx, inputs, attrs):
            x = inputs[0] if explicit is None else F.pad(inputs[0], explicit)
            y = conv(x, weight.get(x.shape), bias, pads, strides, dil, groups, u_attr, u_scalars, u_alg)
            return apply_steps(y, rest, inputs) if rest else y
    else:
        def kernel(ctx, inputs, attrs):
            x = inputs[0] if explicit is None else F.pad(inputs[0], explicit)
            other = inputs[add].contiguous(memory_format=torch.channels_last)
            y = conv_add(x, other, weight.get(x.shape), bias, pads, strides, dil, groups, "add", None,
                         u_attr, u_scalars, u_alg)
            return apply_steps(y, rest, inputs) if rest else y
    return Tactic(f"onednn_conv[{_describe(add, unary, rest)}]", kernel)


def linear_tactic(node, constants: dict) -> Tactic | None:
    """oneDNN matmul with a reordered [N, K] weight; bias, one activation or a residual add as post-ops."""
    w = constants.get(node.inputs[1].id) if node.inputs[1] is not None else None
    if w is None or w.dim() != 2 or not _dtype_ok(w.dtype) or w.device.type != "cpu":
        return None
    b_v = node.inputs[2] if len(node.inputs) > 2 else None
    b = None if b_v is None else constants.get(b_v.id)
    if b_v is not None and (b is None or b.dtype != w.dtype or b.dim() != 1):
        return None
    dense = w.contiguous()
    weight = _PerShape(lambda shape: torch.ops.mkldnn._reorder_linear_weight(dense, _rows(shape)), dense)
    bias = None if b is None else b.contiguous()
    # oneDNN's linear takes either a residual add or one activation as its post-op, not both.
    add, unary, rest = split_epilogue(node.attrs.get("epilogue", []))
    u_attr, u_scalars, u_alg = unary if unary is not None else ("none", [], "")
    linear = torch.ops.mkldnn._linear_pointwise.default
    linear_add = torch.ops.mkldnn._linear_pointwise.binary
    plain_w = dense

    if add is None:
        def kernel(ctx, inputs, attrs):
            x = inputs[0]
            if x.dim() < 2:
                return apply_epilogue(F.linear(x, plain_w, bias), attrs.get("epilogue", []), inputs)
            y = linear(x, weight.get(x.shape), bias, u_attr, u_scalars, u_alg)
            return apply_steps(y, rest, inputs) if rest else y
    else:
        def kernel(ctx, inputs, attrs):
            x = inputs[0]
            if x.dim() < 2:
                return apply_epilogue(F.linear(x, plain_w, bias), attrs.get("epilogue", []), inputs)
            y = linear_add(x, inputs[add].contiguous(), weight.get(x.shape), bias, "add")
            return apply_steps(y, rest, inputs) if rest else y
    return Tactic(f"onednn_linear[{_describe(add, unary, rest)}]", kernel)


def prefers_gemm(node) -> bool:
    """Whether a kiln::Conv should default to ``conv1x1_gemm_tactic`` rather than the oneDNN convolution: a
    1x1, stride-1 layer without a residual add. Measured on ResNet-50's 1x1 layers (2 AVX-512 cores, oneDNN
    3.12, benchmarks/bench_cpu_conv.py): the matmul is 0-4% faster with the weights in cache, 3-6% with them
    cold (as in a model), and costs ~17 us per call to the convolution's ~28; with a residual add the
    convolution's fused add+ReLU wins by 2-7%, so those layers keep it (the tuner may still pick either)."""
    w = getattr(node.inputs[1], "const", None) if len(node.inputs) > 1 else None
    return (_gemm_takes(node, w) and list(node.attrs.get("strides", [1, 1])) == [1, 1]
            and not any(isinstance(s, AddInput) for s in parse_epilogue(node.attrs.get("epilogue", []))))


def _gemm_takes(node, w: torch.Tensor | None) -> bool:
    """A constant fp32 CPU 1x1 weight, no padding, no groups: a 1x1 convolution that is a plain matmul."""
    if w is None or w.dim() != 4 or tuple(w.shape[2:]) != (1, 1) or not _dtype_ok(w.dtype) \
            or w.device.type != "cpu":
        return False
    explicit, pads = _conv_pads(node.attrs, 2)
    return explicit is None and not any(pads) and int(node.attrs.get("group", 1)) == 1


def conv1x1_gemm_tactic(node, constants: dict) -> Tactic | None:
    """A 1x1 ungrouped, unpadded convolution as a oneDNN matmul on the NHWC activations viewed as [N*H*W, C].

    The channels-last input is already that matrix (no copy); a stride keeps every s-th pixel first (a copy
    of 1/s^2 of the input). The [N*H*W, Cout] result viewed back as NCHW is channels-last, as the oneDNN
    convolution returns it. oneDNN's matmul takes the bias and one activation or the residual add as
    post-ops; a ReLU after the add runs in place after the call."""
    w = constants.get(node.inputs[1].id) if node.inputs[1] is not None else None
    if not _gemm_takes(node, w):
        return None
    attrs = node.attrs
    b_v = node.inputs[2] if len(node.inputs) > 2 else None
    b = None if b_v is None else constants.get(b_v.id)
    if b_v is not None and (b is None or b.dtype != w.dtype):
        return None
    sh, sw = (int(s) for s in attrs.get("strides", [1, 1]))
    cout = w.shape[0]
    dense = w.reshape(cout, -1).contiguous()
    weight = _PerShape(lambda rows: torch.ops.mkldnn._reorder_linear_weight(dense, rows), dense)
    bias = None if b is None else b.contiguous()
    add, unary, rest = split_epilogue(attrs.get("epilogue", []))
    u_attr, u_scalars, u_alg = unary if unary is not None else ("none", [], "")
    linear = torch.ops.mkldnn._linear_pointwise.default
    linear_add = torch.ops.mkldnn._linear_pointwise.binary
    strided = (sh, sw) != (1, 1)

    def pixels(x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] (any layout) -> [N, H, W, C], dense: a view when channels-last (oneDNN's matmul takes
        the 4-D tensor as its [N*H*W, C] rows, so no reshape is called: each op call costs ~1-3 us here)."""
        if strided:
            x = x[:, :, ::sh, ::sw]
        x = x.permute(0, 2, 3, 1)
        return x if x.is_contiguous() else x.contiguous()

    def kernel(ctx, inputs, attrs):
        x = inputs[0]
        rows = pixels(x)
        wt = weight.get(rows.shape[0] * rows.shape[1] * rows.shape[2])
        if add is None:
            y = linear(rows, wt, bias, u_attr, u_scalars, u_alg)
        else:
            residual = inputs[add].permute(0, 2, 3, 1)
            y = linear_add(rows, residual if residual.is_contiguous() else residual.contiguous(), wt, bias, "add")
        y = y.permute(0, 3, 1, 2)  # [N, H, W, Cout] -> NCHW, channels-last in memory
        return apply_steps(y, rest, inputs) if rest else y
    return Tactic(f"onednn_gemm[{_describe(add, unary, rest)}]", kernel)


def _describe(add, unary, rest) -> str:
    parts = (["add"] if add is not None else []) + ([unary[0]] if unary is not None else [])
    desc = "+".join(parts) or "none"
    return desc + (f"; then {','.join(s.to_json() for s in rest)}" if rest else "")


# tactic name (as kiln/tactics/space.py lists it) -> {(domain, op type): chooser(node, constants) -> Tactic | None}
_CHOOSERS = {
    "onednn": {("kiln", "Conv"): conv_tactic, ("kiln", "Linear"): linear_tactic},
    "onednn_gemm": {("kiln", "Conv"): conv1x1_gemm_tactic},
}
