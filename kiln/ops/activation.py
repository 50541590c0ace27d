"""Ops of the 'activation' family: pointwise nonlinearities of neural networks."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .elementwise_broadcast import co_locate
from .elementwise_int import is_unsigned, narrow, widen
from .registry import OpSet

ops = OpSet("activation")


def _f32(x: float) -> float:
    # ONNX float attributes are float32; defaults must be too, or float64 inputs see another constant.
    return torch.tensor(x, dtype=torch.float32).item()


@ops.op("Relu", elementwise=True, same_shape=True)
def relu(ctx, inputs, attrs):
    return torch.relu(inputs[0])


@ops.op("Sigmoid", elementwise=True, same_shape=True)
def sigmoid(ctx, inputs, attrs):
    return torch.sigmoid(inputs[0])


@ops.op("Elu", elementwise=True, same_shape=True)
def elu(ctx, inputs, attrs):
    return F.elu(inputs[0], alpha=attrs.get("alpha", 1.0))


@ops.op("Selu", elementwise=True, same_shape=True)
def selu(ctx, inputs, attrs):
    """gamma * (x if x > 0 else alpha * (exp(x) - 1)); F.selu fixes alpha and gamma, ONNX does not."""
    x = inputs[0]
    alpha = attrs.get("alpha", 1.67326319217681884765625)
    gamma = attrs.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@ops.op("Celu", elementwise=True)
def celu(ctx, inputs, attrs):
    return F.celu(inputs[0], alpha=attrs.get("alpha", 1.0))


@ops.op("LeakyRelu", elementwise=True, same_shape=True)
def leaky_relu(ctx, inputs, attrs):
    return F.leaky_relu(inputs[0], negative_slope=attrs.get("alpha", _f32(0.01)))


@ops.op("PRelu", broadcasting=True)  # not elementwise=: slopes per channel before opset 7
def prelu(ctx, inputs, attrs):
    """x if x >= 0 else slope * x, slope broadcast to x."""
    x, slope = co_locate(*inputs)
    if is_unsigned(x.dtype):
        return x
    if ctx.opset < 7 and slope.dim() == 1 and x.dim() > 2 and slope.shape[0] == x.shape[1] != 1:
        # Early opsets gave one slope per channel (dim 1), not numpy-aligned to the last dim.
        slope = slope.reshape((-1,) + (1,) * (x.dim() - 2))
    return torch.where(x < 0, x * slope, x)


@ops.op("HardSigmoid", elementwise=True, same_shape=True)
def hard_sigmoid(ctx, inputs, attrs):
    x = inputs[0]
    return torch.clamp(x * attrs.get("alpha", _f32(0.2)) + attrs.get("beta", 0.5), 0, 1)


@ops.op("HardSwish", elementwise=True, same_shape=True)
def hard_swish(ctx, inputs, attrs):
    return F.hardswish(inputs[0])


@ops.op("Softplus", elementwise=True, same_shape=True)
def softplus(ctx, inputs, attrs):
    return F.softplus(inputs[0])


@ops.op("Softsign", elementwise=True)
def softsign(ctx, inputs, attrs):
    return F.softsign(inputs[0])


@ops.op("Mish", elementwise=True)
def mish(ctx, inputs, attrs):
    return F.mish(inputs[0])


@ops.op("Gelu", elementwise=True, same_shape=True)
def gelu(ctx, inputs, attrs):
    """Exact (erf) Gelu, or its tanh approximation with approximate='tanh'."""
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    x = inputs[0]
    y = F.gelu(x, approximate=approximate)
    if approximate == "none" and x.device.type == "cpu":
        # torch's vectorized CPU kernel (float32, bfloat16) turns +inf into NaN.
        y = torch.where(torch.isposinf(x), x, y)
    return y


def _swish(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return F.silu(x) if alpha == 1.0 else x * torch.sigmoid(alpha * x)


@ops.op("Swish", elementwise=True, same_shape=True)
def swish(ctx, inputs, attrs):
    return _swish(inputs[0], attrs.get("alpha", 1.0))


@ops.op("SwiGLU")
def swiglu(ctx, inputs, attrs):
    """Swish_alpha(A) * B: the gated unit of Llama-style MLPs."""
    a, b = co_locate(*inputs)
    return _swish(a, attrs.get("alpha", 1.0)) * b


@ops.op("ThresholdedRelu", elementwise=True)
def thresholded_relu(ctx, inputs, attrs):
    x = inputs[0]
    return torch.where(x > attrs.get("alpha", 1.0), x, 0)


@ops.op("Shrink", elementwise=True)
def shrink(ctx, inputs, attrs):
    """x + bias below -lambd, x - bias above lambd, 0 between; integers computed in float64, truncated."""
    x = inputs[0]
    bias, lambd = attrs.get("bias", 0.0), attrs.get("lambd", 0.5)
    xf = x if x.dtype.is_floating_point else widen(x).to(torch.float64)
    y = torch.where(xf < -lambd, xf + bias, torch.where(xf > lambd, xf - bias, 0))
    if x.dtype.is_floating_point:
        return y
    return narrow(y.to(torch.int64), x.dtype)

