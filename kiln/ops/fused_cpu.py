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

Epilogue steps map onto oneDNN post-ops as one activation, a residual add, or (convolution only) a residual
add then ReLU, which is what torch's fused oneDNN ops accept; whatever follows runs as the plain epilogue
after the oneDNN call. The reordered copies cost one more set of weights in memory per input shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .fused import _conv_pads, apply_epilogue

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


def _unary(step: str) -> tuple[str, list, str] | None:
    """One epilogue step as oneDNN's (attr, scalars, algorithm), or None when it has no post-op."""
    name, *p = step.split(":")
    if name in ("relu", "sigmoid", "tanh", "hardswish"):
        return name, [], ""
    if name == "silu":
        return "swish", [], ""
    if name == "gelu":
        return "gelu", [], "none"
    if name == "gelu_tanh":
        return "gelu", [], "tanh"
    if name == "leaky_relu":
        return "leaky_relu", [float(p[0])], ""
    if name == "clip" and p[0] != "" and p[1] != "":
        return "hardtanh", [float(p[0]), float(p[1])], ""
    return None


def split_epilogue(epilogue: list[str], unary_after_add: tuple[str, ...] = ("relu",)):
    """``epilogue`` as (residual input index or None, unary post-op or None, remaining plain steps).

    oneDNN (through torch) fuses a unary step after the residual add only for ``unary_after_add``."""
    rest = list(epilogue)
    add = None
    if rest and rest[0].startswith("add:"):
        add = int(rest.pop(0)[4:])
        if not rest or rest[0] not in unary_after_add:
            return add, None, rest
    unary = _unary(rest[0]) if rest else None
    if unary is not None:
        rest.pop(0)
    return add, unary, rest


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
    if w is None or w.dim() != 4 or w.dtype != torch.float32 or w.device.type != "cpu":
        return None
    b_v = node.inputs[2] if len(node.inputs) > 2 else None
    b = None if b_v is None else constants.get(b_v.id)
    if b_v is not None and (b is None or b.dtype != torch.float32):
        return None
    attrs = node.attrs
    explicit, pads = _conv_pads(attrs, 2)
    strides, dil, groups = list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1])), \
        int(attrs.get("group", 1))
    dense = w.contiguous()
    weight = _PerShape(lambda shape: torch.ops.mkldnn._reorder_convolution_weight(
        dense, pads, strides, dil, groups, list(shape)), dense)
    bias = None if b is None else b.contiguous()
    add, unary, rest = split_epilogue(list(attrs.get("epilogue", [])))
    u_attr, u_scalars, u_alg = unary if unary is not None else ("none" if add is None else None, [], "")
    conv = torch.ops.mkldnn._convolution_pointwise.default
    conv_add = torch.ops.mkldnn._convolution_pointwise.binary

    if add is None:
        def kernel(ctx, inputs, attrs):
            x = inputs[0] if explicit is None else F.pad(inputs[0], explicit)
            y = conv(x, weight.get(x.shape), bias, pads, strides, dil, groups, u_attr, u_scalars, u_alg)
            return apply_epilogue(y, rest, inputs) if rest else y
    else:
        def kernel(ctx, inputs, attrs):
            x = inputs[0] if explicit is None else F.pad(inputs[0], explicit)
            other = inputs[add].contiguous(memory_format=torch.channels_last)
            y = conv_add(x, other, weight.get(x.shape), bias, pads, strides, dil, groups, "add", None,
                         u_attr, u_scalars, u_alg)
            return apply_epilogue(y, rest, inputs) if rest else y
    return Tactic(f"onednn_conv[{_describe(add, unary, rest)}]", kernel)


def linear_tactic(node, constants: dict) -> Tactic | None:
    """oneDNN matmul with a reordered [N, K] weight; bias, one activation or a residual add as post-ops."""
    w = constants.get(node.inputs[1].id) if node.inputs[1] is not None else None
    if w is None or w.dim() != 2 or w.dtype != torch.float32 or w.device.type != "cpu":
        return None
    b_v = node.inputs[2] if len(node.inputs) > 2 else None
    b = None if b_v is None else constants.get(b_v.id)
    if b_v is not None and (b is None or b.dtype != torch.float32 or b.dim() != 1):
        return None
    dense = w.contiguous()
    weight = _PerShape(lambda shape: torch.ops.mkldnn._reorder_linear_weight(dense, _rows(shape)), dense)
    bias = None if b is None else b.contiguous()
    # oneDNN's linear takes either a residual add or one activation as its post-op, not both.
    add, unary, rest = split_epilogue(list(node.attrs.get("epilogue", [])), unary_after_add=())
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
            return apply_epilogue(y, rest, inputs) if rest else y
    else:
        def kernel(ctx, inputs, attrs):
            x = inputs[0]
            if x.dim() < 2:
                return apply_epilogue(F.linear(x, plain_w, bias), attrs.get("epilogue", []), inputs)
            y = linear_add(x, inputs[add].contiguous(), weight.get(x.shape), bias, "add")
            return apply_epilogue(y, rest, inputs) if rest else y
    return Tactic(f"onednn_linear[{_describe(add, unary, rest)}]", kernel)


def _describe(add, unary, rest) -> str:
    parts = (["add"] if add is not None else []) + ([unary[0]] if unary is not None else [])
    desc = "+".join(parts) or "none"
    return desc + (f"; then {','.join(rest)}" if rest else "")


_CHOOSERS = {("kiln", "Conv"): conv_tactic, ("kiln", "Linear"): linear_tactic}
