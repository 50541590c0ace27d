"""Normalizations: batch/instance/layer/group/RMS/Lp/mean-variance/local-response, and the softmax ops.

Statistics of float16/bfloat16 tensors are computed in float32 (and for Layer/RMS/Group
normalization in the precision ``stash_type`` asks for); results come back in the input's type.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ir.dtype import DType
from .norm_softmax import hardmax, log_softmax, softmax
from .reduce_dtypes import stat_dtype
from .registry import OpSet

ops = OpSet("norm")
ops.add("Softmax", softmax, same_shape=True)
ops.add("LogSoftmax", log_softmax, same_shape=True)
ops.add("Hardmax", hardmax)


def _per_channel(p: torch.Tensor, rank: int, dtype: torch.dtype) -> torch.Tensor:
    """A parameter indexed from the channel dim (1) on: [C] -> [C,1,..,1]; [C,D1,..] stays aligned."""
    return p.to(dtype).reshape(*p.shape, *([1] * (rank - 1 - p.dim())))


def _var_mean(xs: torch.Tensor, dims: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Population variance and mean over ``dims`` (kept), in two passes as the ONNX functions do.

    (torch.var_mean warns on empty tensors.) dims=[] means all dims, as with ONNX's ReduceMean.
    """
    mean = xs.mean(dim=dims, keepdim=True)
    d = xs - mean
    return (d * d).mean(dim=dims, keepdim=True), mean


# ---------------------------------------------------------------------------------------------
# BatchNormalization


@ops.op("BatchNormalization")
def batch_normalization(ctx, inputs, attrs):
    """BatchNormalization: inference with the running statistics, or (training_mode, or the extra
    outputs of opset<14) with the batch's statistics, returning the updated running mean/var."""
    x, scale, bias, mean, var = inputs[:5]
    eps = attrs.get("epsilon", 1e-5)
    momentum = attrs.get("momentum", 0.9)
    if ctx.opset >= 14:
        training = bool(attrs.get("training_mode", 0))
    else:
        # before opset 14 the presence of the running-statistics outputs meant training
        training = ctx.num_outputs > 1 and not attrs.get("is_test", 0)
    if not training and x.dim() >= 2 and all(p.dim() == 1 and p.dtype == x.dtype for p in inputs[1:5]):
        return F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)  # torch's fused kernel
    work = stat_dtype(x.dtype)
    xs, rank = x.to(work), x.dim()
    if not training:
        inv = torch.rsqrt(_per_channel(var, rank, work) + eps) * _per_channel(scale, rank, work)
        y = (xs - _per_channel(mean, rank, work)) * inv + _per_channel(bias, rank, work)
        return y.to(x.dtype)
    # spatial=0 (opset<9) keeps one statistic per (channel, position): reduce over the batch only
    dims = [d for d in range(rank) if d != 1] if attrs.get("spatial", 1) else [0]
    batch_var, batch_mean = _var_mean(xs, dims)
    y = (xs - batch_mean) * torch.rsqrt(batch_var + eps) * _per_channel(scale, rank, work)
    y = (y + _per_channel(bias, rank, work)).to(x.dtype)
    batch_var, batch_mean = batch_var.reshape(var.shape), batch_mean.reshape(mean.shape)
    run_mean = (mean.to(work) * momentum + batch_mean * (1 - momentum)).to(mean.dtype)
    run_var = (var.to(work) * momentum + batch_var * (1 - momentum)).to(var.dtype)
    if ctx.opset >= 14:
        return y, run_mean, run_var
    return y, run_mean, run_var, batch_mean.to(mean.dtype), batch_var.to(var.dtype)


# ---------------------------------------------------------------------------------------------
# Instance / Group / Layer / RMS normalization


@ops.op("InstanceNormalization")
def instance_normalization(ctx, inputs, attrs):
    """InstanceNormalization: each (n, c) slice normalized over its spatial dims."""
    x, scale, bias = inputs
    work = stat_dtype(x.dtype)
    xs = x.to(work)
    if x.dim() > 2:
        var, mean = _var_mean(xs, list(range(2, x.dim())))
    else:  # no spatial dims: each value is its own mean
        var, mean = torch.zeros_like(xs), xs
    y = (xs - mean) * torch.rsqrt(var + attrs.get("epsilon", 1e-5))
    y = y * _per_channel(scale, x.dim(), work) + _per_channel(bias, x.dim(), work)
    return y.to(x.dtype)


def _stash_dtype(x: torch.Tensor, attrs: dict) -> torch.dtype:
    """The precision of the standardization stage: stash_type (default float), never below x's."""
    stash = DType(attrs.get("stash_type", 1)).torch
    return x.dtype if x.dtype == torch.float64 else stash


@ops.op("GroupNormalization")
def group_normalization(ctx, inputs, attrs):
    """GroupNormalization: scale/bias per channel (opset 21) or per group (opset 18)."""
    x, scale, bias = inputs
    groups = int(attrs["num_groups"])
    n, c = x.shape[0], x.shape[1]
    if c % groups:
        raise ValueError(f"GroupNormalization: {c} channels do not split into {groups} groups")
    xs = x.to(_stash_dtype(x, attrs)).reshape(n, groups, (c // groups) * math.prod(x.shape[2:]))
    var, mean = _var_mean(xs, [-1])
    normalized = ((xs - mean) * torch.rsqrt(var + attrs.get("epsilon", 1e-5))).reshape(x.shape).to(x.dtype)
    if scale.numel() != c:
        # opset 18 gave one scale/bias per group: spread each over the group's channels
        scale, bias = (t.reshape(-1).repeat_interleave(c // groups) for t in (scale, bias))
    return normalized * _per_channel(scale, x.dim(), x.dtype) + _per_channel(bias, x.dim(), x.dtype)


def _stat_output_dtype(ctx, i: int, attrs: dict) -> torch.dtype:
    declared = ctx.output_dtype(i)
    return declared.torch if declared else DType(attrs.get("stash_type", 1)).torch


@ops.op("LayerNormalization", same_shape=True)
def layer_normalization(ctx, inputs, attrs):
    """LayerNormalization: normalized over dims axis..rank-1; optional outputs Mean and InvStdDev."""
    return layer_norm(inputs, attrs, ctx if ctx.num_outputs > 1 else None)


def layer_norm(inputs: list, attrs: dict, stats_ctx=None):
    """Y of LayerNormalization; with ``stats_ctx`` (a KernelContext) also Mean and InvStdDev in its types."""
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = attrs.get("axis", -1) % x.dim()
    norm_shape = x.shape[axis:]
    eps = attrs.get("epsilon", 1e-5)
    if stats_ctx is None and scale.shape == norm_shape and (bias is None or bias.shape == norm_shape) \
            and _stash_dtype(x, attrs) in (torch.float32, x.dtype):
        # torch's fused kernel computes its statistics in at least float32, as stash_type asks
        return F.layer_norm(x, norm_shape, scale, bias, eps)
    xs = x.to(_stash_dtype(x, attrs))
    var, mean = _var_mean(xs, list(range(axis, x.dim())))
    inv_std = torch.rsqrt(var + eps)
    y = ((xs - mean) * inv_std).to(x.dtype) * scale
    if bias is not None:
        y = y + bias
    if stats_ctx is None:
        return y
    return y, mean.to(_stat_output_dtype(stats_ctx, 1, attrs)), inv_std.to(_stat_output_dtype(stats_ctx, 2, attrs))


@ops.op("RMSNormalization")
def rms_normalization(ctx, inputs, attrs):
    """RMSNormalization: x / sqrt(mean(x^2 over dims axis..) + epsilon) * scale."""
    x, scale = inputs
    axis = attrs.get("axis", -1) % x.dim()
    xs = x.to(_stash_dtype(x, attrs))
    mean_sq = (xs * xs).mean(dim=list(range(axis, x.dim())), keepdim=True)
    return (xs * torch.rsqrt(mean_sq + attrs.get("epsilon", 1e-5))).to(x.dtype) * scale


# ---------------------------------------------------------------------------------------------
# Lp / mean-variance / local response normalization


@ops.op("LpNormalization")
def lp_normalization(ctx, inputs, attrs):
    """LpNormalization: x / ||x||_p along axis (p 1 or 2); a zero norm gives zeros."""
    x = inputs[0]
    p = int(attrs.get("p", 2))
    if p not in (1, 2):
        raise ValueError(f"LpNormalization: p must be 1 or 2, got {p}")
    xs = x.to(stat_dtype(x.dtype))
    norm = torch.linalg.vector_norm(xs, ord=p, dim=attrs.get("axis", -1), keepdim=True)
    return torch.where(norm == 0, torch.zeros_like(xs), xs / norm).to(x.dtype)


@ops.op("MeanVarianceNormalization")
def mean_variance_normalization(ctx, inputs, attrs):
    """MeanVarianceNormalization: (x - E[x]) / (sqrt(Var[x]) + 1e-9) over axes (default 0, 2, 3)."""
    x = inputs[0]
    axes = [a % x.dim() for a in attrs.get("axes", [0, 2, 3])]
    xs = x.to(stat_dtype(x.dtype))
    var, mean = _var_mean(xs, axes)
    return ((xs - mean) / (torch.sqrt(var) + 1e-9)).to(x.dtype)


@ops.op("LRN")
def lrn(ctx, inputs, attrs):
    """LRN: x / (bias + alpha/size * sum of x^2 over a window of `size` channels) ^ beta."""
    x = inputs[0]
    size = int(attrs["size"])
    alpha, beta, bias = attrs.get("alpha", 1e-4), attrs.get("beta", 0.75), attrs.get("bias", 1.0)
    xs = x.to(stat_dtype(x.dtype))
    # the window around channel c is [c - floor((size-1)/2), c + ceil((size-1)/2)], clipped
    lo, hi = (size - 1) // 2, math.ceil((size - 1) / 2)
    sq = F.pad((xs * xs).movedim(1, -1), (lo, hi))
    square_sum = sq.unfold(-1, size, 1).sum(-1).movedim(-1, 1)
    return (xs / (bias + (alpha / size) * square_sum) ** beta).to(x.dtype)
