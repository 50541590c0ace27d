"""CPU tactics for kiln::Conv and kiln::Linear: oneDNN with weights reordered once and the epilogue run as
oneDNN post-ops (what PyTorch Inductor's CPU backend runs after freezing).

A tactic is chosen per layer when an Engine binds its constants on the CPU (``choose_tactics``). The engine
file keeps the plain weights, so it stays portable and data-only; the reordered weights live in the tactic's
kernel, one copy per loaded engine, shared by its contexts (they are only read). A tactic kernel has the
ordinary kernel signature and ignores the layer's weight and bias inputs. Layers a tactic cannot take keep
the plain kernels of fused.py, which are also the oracle the tests check every tactic against.

Epilogue steps map onto oneDNN post-ops as ``[add:I]? [unary]?`` (a residual add, then one activation);
whatever follows runs as the plain epilogue after the oneDNN call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .fused import _conv_pads, apply_epilogue

Kernel = Callable


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


def split_epilogue(epilogue: list[str], allow_unary_after_add: bool = True):
    """``epilogue`` as (residual input index or None, unary post-op or None, remaining plain steps)."""
    rest = list(epilogue)
    add = None
    if rest and rest[0].startswith("add:"):
        add = int(rest.pop(0)[4:])
        if not allow_unary_after_add:
            return add, None, rest
    unary = _unary(rest[0]) if rest else None
    if unary is not None:
        rest.pop(0)
    return add, unary, rest


def _static_shape(v) -> list[int] | None:
    shape = getattr(getattr(v, "type", None), "shape", None)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return [int(d) for d in shape]


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
    in_shape = _static_shape(node.inputs[0])
    if in_shape is not None and explicit is not None:
        in_shape = in_shape[:2] + [in_shape[2] + explicit[2] + explicit[3], in_shape[3] + explicit[0] + explicit[1]]
    try:
        packed = torch.ops.mkldnn._reorder_convolution_weight(w.contiguous(), pads, strides, dil, groups, in_shape)
    except RuntimeError:
        return None
    bias = None if b is None else b.contiguous()
    add, unary, rest = split_epilogue(list(attrs.get("epilogue", [])))
    u_attr, u_scalars, u_alg = unary if unary is not None else ("none", [], "")
    conv = torch.ops.mkldnn._convolution_pointwise.default
    conv_add = torch.ops.mkldnn._convolution_pointwise.binary

    if add is None:
        def kernel(ctx, inputs, attrs):
            x = inputs[0] if explicit is None else F.pad(inputs[0], explicit)
            y = conv(x, packed, bias, pads, strides, dil, groups, u_attr, u_scalars, u_alg)
            return apply_epilogue(y, rest, inputs) if rest else y
    else:
        def kernel(ctx, inputs, attrs):
            x = inputs[0] if explicit is None else F.pad(inputs[0], explicit)
            other = inputs[add].contiguous(memory_format=torch.channels_last)
            y = conv_add(x, other, packed, bias, pads, strides, dil, groups, "add", None, u_attr, u_scalars, u_alg)
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
    in_shape = _static_shape(node.inputs[0])
    if in_shape is not None and len(in_shape) < 2:
        return None
    rows = None
    if in_shape is not None:
        rows = 1
        for d in in_shape[:-1]:
            rows *= d
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), rows)
    except RuntimeError:
        return None
    bias = None if b is None else b.contiguous()
    # oneDNN's linear takes either a residual add or one activation as its post-op, not both.
    add, unary, rest = split_epilogue(list(node.attrs.get("epilogue", [])), allow_unary_after_add=False)
    u_attr, u_scalars, u_alg = unary if unary is not None else ("none", [], "")
    linear = torch.ops.mkldnn._linear_pointwise.default
    linear_add = torch.ops.mkldnn._linear_pointwise.binary
    plain_w = w

    if add is None:
        def kernel(ctx, inputs, attrs):
            x = inputs[0]
            if x.dim() < 2:
                return apply_epilogue(F.linear(x, plain_w, bias), attrs.get("epilogue", []), inputs)
            y = linear(x, packed, bias, u_attr, u_scalars, u_alg)
            return apply_epilogue(y, rest, inputs) if rest else y
    else:
        def kernel(ctx, inputs, attrs):
            x = inputs[0]
            if x.dim() < 2:
                return apply_epilogue(F.linear(x, plain_w, bias), attrs.get("epilogue", []), inputs)
            y = linear_add(x, inputs[add].contiguous(), packed, bias, "add")
            return apply_epilogue(y, rest, inputs) if rest else y
    return Tactic(f"onednn_linear[{_describe(add, unary, rest)}]", kernel)


def _describe(add, unary, rest) -> str:
    parts = (["add"] if add is not None else []) + ([unary[0]] if unary is not None else [])
    desc = "+".join(parts) or "none"
    return desc + (f"; then {','.join(rest)}" if rest else "")


_CHOOSERS = {("kiln", "Conv"): conv_tactic, ("kiln", "Linear"): linear_tactic}


def choose_tactics(nodes, constants: dict, device: torch.device) -> dict:
    """{node: Tactic} for the layers of ``nodes`` that have a CPU tactic (empty off the CPU)."""
    if device.type != "cpu" or not _available():
        return {}
    out = {}
    for n in nodes:
        choose = _CHOOSERS.get((n.domain, n.op_type))
        if choose is None:
            continue
        t = choose(n, constants)
        if t is not None:
            out[n] = t
    return out
