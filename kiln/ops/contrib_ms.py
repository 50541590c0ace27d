"""onnxruntime's com.microsoft contrib ops: activations, bias adds, fused MatMul/Conv and the layer norms.

These kernels are the reference meaning of each op (onnxruntime's CPU kernels are the oracle); the build
pass ``lower_contrib_ms`` rewrites the common ones into the standard layers Kiln's fusions already know.
The attention ops live in ``contrib_ms_attention``, the quantized ones in ``contrib_ms_quant``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .activation import gelu as onnx_gelu
from .conv import conv
from .registry import KernelContext, OpSet

MS = "com.microsoft"
ops = OpSet("contrib_ms")


def _add_bias(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x if bias is None else x + bias


def _gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return onnx_gelu(None, [x], {})  # ONNX Gelu's kernel: it keeps Gelu(+inf) = +inf, as onnxruntime does


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


@ops.op("Gelu", domain=MS, elementwise=True, same_shape=True)
def gelu(ctx: KernelContext, inputs: list, attrs: dict):
    """x * Phi(x), Phi the standard normal CDF (erf form)."""
    return _gelu_erf(inputs[0])


@ops.op("BiasGelu", domain=MS)
def bias_gelu(ctx: KernelContext, inputs: list, attrs: dict):
    """Gelu(x + bias), bias over the last axis."""
    return _gelu_erf(inputs[0] + inputs[1])


@ops.op("FastGelu", domain=MS)
def fast_gelu(ctx: KernelContext, inputs: list, attrs: dict):
    """The tanh approximation of Gelu, of x + bias when a bias is given."""
    return _gelu_tanh(_add_bias(inputs[0], inputs[1] if len(inputs) > 1 else None))


@ops.op("QuickGelu", domain=MS, elementwise=True, same_shape=True)
def quick_gelu(ctx: KernelContext, inputs: list, attrs: dict):
    """x * sigmoid(alpha * x), alpha 1.702 by default."""
    x = inputs[0]
    return x * torch.sigmoid(float(attrs.get("alpha", 1.702)) * x)


@ops.op("BiasAdd", domain=MS)
def bias_add(ctx: KernelContext, inputs: list, attrs: dict):
    """X (N, S, C) + bias (C) + skip (N, S, C)."""
    x, bias, skip = inputs[:3]
    return x + bias + skip


@ops.op("BiasSoftmax", domain=MS)
def bias_softmax(ctx: KernelContext, inputs: list, attrs: dict):
    """Softmax(data + bias) over the axes from ``axis`` on (flattened, as Softmax before opset 13)."""
    x = inputs[0] + inputs[1]
    axis = int(attrs.get("axis", 1)) % x.dim()
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return torch.softmax(flat, dim=-1).reshape(x.shape)


def _batch_transposed(x: torch.Tensor) -> torch.Tensor:
    """transBatch: [d0, d1, .., dn-2, dn-1] read as [d1, .., dn-2, d0, dn-1] (the first axis moves behind the batch)."""
    r = x.dim()
    return x.permute(list(range(1, r - 1)) + [0, r - 1]) if r > 2 else x


@ops.op("FusedMatMul", domain=MS)
def fused_matmul(ctx: KernelContext, inputs: list, attrs: dict):
    """alpha * op(A) @ op(B), op a batch transpose (transBatchA/B) then a transpose of the last two axes."""
    a, b = inputs[:2]
    if attrs.get("transBatchA", 0):
        a = _batch_transposed(a)
    if attrs.get("transBatchB", 0):
        b = _batch_transposed(b)
    if attrs.get("transA", 0):
        a = a.transpose(-1, -2)
    if attrs.get("transB", 0):
        b = b.transpose(-1, -2)
    y = torch.matmul(a, b)
    alpha = float(attrs.get("alpha", 1.0))
    return y if alpha == 1.0 else y * alpha


_FUSED_ACTIVATIONS = {
    "Relu": lambda x, p: torch.relu(x),
    "Tanh": lambda x, p: torch.tanh(x),
    "Sigmoid": lambda x, p: torch.sigmoid(x),
    "LeakyRelu": lambda x, p: F.leaky_relu(x, p[0] if p else 0.01),
    "Clip": lambda x, p: torch.clamp(x, p[0], p[1]),
    "HardSigmoid": lambda x, p: torch.clamp(x * (p[0] if p else 0.2) + (p[1] if len(p) > 1 else 0.5), 0.0, 1.0),
}


def _check_fused_conv(attrs: dict, given: list, used: list) -> str | None:
    act = attrs.get("activation", "")
    if act and act not in _FUSED_ACTIVATIONS:
        return f"attribute activation={act!r} is not supported (Kiln knows {', '.join(_FUSED_ACTIVATIONS)})"
    if act == "Clip" and len(attrs.get("activation_params", [])) != 2:
        return "activation Clip needs activation_params [min, max]"
    return None


@ops.op("FusedConv", domain=MS, check=_check_fused_conv)
def fused_conv(ctx: KernelContext, inputs: list, attrs: dict):
    """activation(Conv(X, W, B) + Z), Z the optional fourth input (a residual sum)."""
    conv_attrs = {k: v for k, v in attrs.items() if k not in ("activation", "activation_params")}
    y = conv(ctx, [inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None], conv_attrs)
    if len(inputs) > 3 and inputs[3] is not None:
        y = y + inputs[3]
    act = attrs.get("activation", "")
    return _FUSED_ACTIVATIONS[act](y, list(attrs.get("activation_params", []))) if act else y


# --- layer norms -------------------------------------------------------------------------------------------
def _layer_norm_stats(x: torch.Tensor, eps: float, simplified: bool):
    """(normalized x, mean, 1/std) over the last axis, in float32 at least (onnxruntime's CPU kernels do)."""
    xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if simplified:
        mean = None
        inv_std = torch.rsqrt((xs * xs).mean(-1, keepdim=True) + eps)
        return xs * inv_std, mean, inv_std
    var, mean = torch.var_mean(xs, dim=-1, unbiased=False, keepdim=True)
    inv_std = torch.rsqrt(var + eps)
    return (xs - mean) * inv_std, mean, inv_std


def _skip_norm(x, skip, gamma, beta, bias, eps: float, simplified: bool):
    """(output, mean, inv_std_var, input_skip_bias_sum); the mean of the simplified (RMS) form is zeros."""
    total = x + skip
    if bias is not None:
        total = total + bias
    y, mean, inv_std = _layer_norm_stats(total, eps, simplified)
    y = y.to(x.dtype) * gamma
    if beta is not None:
        y = y + beta
    stat_shape = total.shape[:-1] + (1,)
    mean = torch.zeros(stat_shape, dtype=torch.float32, device=x.device) if mean is None else mean.float()
    return y, mean, inv_std.float(), total


@ops.op("SkipLayerNormalization", domain=MS)
def skip_layer_normalization(ctx: KernelContext, inputs: list, attrs: dict):
    """LayerNorm(input + skip + bias) * gamma + beta; output 3 is the sum before the norm."""
    x, skip, gamma, beta, bias = (list(inputs) + [None] * 5)[:5]
    return _skip_norm(x, skip, gamma, beta, bias, float(attrs.get("epsilon", 1e-12)), simplified=False)


@ops.op("SkipSimplifiedLayerNormalization", domain=MS)
def skip_simplified_layer_normalization(ctx: KernelContext, inputs: list, attrs: dict):
    """RMSNorm(input + skip + bias) * gamma; output 3 is the sum before the norm."""
    x, skip, gamma, bias = (list(inputs) + [None] * 4)[:4]
    return _skip_norm(x, skip, gamma, None, bias, float(attrs.get("epsilon", 1e-12)), simplified=True)


def _check_simplified(attrs: dict, given: list, used: list) -> str | None:
    if attrs.get("axis", -1) != -1:
        return f"attribute axis={attrs['axis']} is not supported (only -1, the last axis)"
    return None


# onnxruntime registers SimplifiedLayerNormalization in the ONNX domain (its exporters write it there);
# Kiln also accepts it under com.microsoft.
@ops.op("SimplifiedLayerNormalization", check=_check_simplified)
def simplified_layer_normalization(ctx: KernelContext, inputs: list, attrs: dict):
    """x / sqrt(mean(x^2) + epsilon) * scale over the last axis (RMSNorm); output 1 is 1/rms."""
    x, scale = inputs[:2]
    y, _, inv_std = _layer_norm_stats(x, float(attrs.get("epsilon", 1e-5)), simplified=True)
    return y.to(x.dtype) * scale, inv_std.float()


ops.add("SimplifiedLayerNormalization", simplified_layer_normalization, domain=MS, check=_check_simplified)


@ops.op("EmbedLayerNormalization", domain=MS)
def embed_layer_normalization(ctx: KernelContext, inputs: list, attrs: dict):
    """LayerNorm(word[ids] + position[pos] + segment[seg]); mask_index = count of non-zero mask entries per row."""
    ids, seg_ids, word, pos_table, seg_table, gamma, beta, mask, pos_ids = (list(inputs) + [None] * 9)[:9]
    return embed_sum_norm(ids, seg_ids, word, pos_table, seg_table, gamma, beta, mask, pos_ids,
                          float(attrs.get("epsilon", 1e-12)))


def embed_sum_norm(ids, seg_ids, word, pos_table, seg_table, gamma, beta, mask, pos_ids, eps: float):
    """The (output, mask_index, embedding_sum) of EmbedLayerNormalization, shared with its quantized form."""
    b, s = ids.shape
    if pos_ids is None:
        pos_ids = torch.arange(s, device=ids.device).expand(b, s)
    else:
        pos_ids = pos_ids.expand(b, s)
    total = word[ids.long()] + pos_table[pos_ids.long()]
    if seg_table is not None and seg_ids is not None:
        total = total + seg_table[seg_ids.long()]
    y = F.layer_norm(total, total.shape[-1:], gamma.to(total.dtype), beta.to(total.dtype), eps)
    if mask is not None:
        mask_index = (mask != 0).sum(dim=1).to(torch.int32)
    else:
        mask_index = torch.zeros(b, dtype=torch.int32, device=ids.device)
    return y, mask_index, total
