"""Loss ops: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (opset 12+).

Both pick, per sample position, the (log-)probability of the target class out of an (N, C, d1..dk)
input, optionally weight it per class, zero out positions whose target is ``ignore_index``, and reduce.
"""
from __future__ import annotations

import torch

from .registry import KernelContext, OpSet

ops = OpSet("loss")

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _nll(log_prob: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
         reduction: str, ignore_index: int | None) -> torch.Tensor:
    """Negative log likelihood of ``target`` under ``log_prob`` (N, C, d...), ONNX semantics."""
    if log_prob.dim() < 2:
        raise ValueError(f"loss input must have rank >= 2 (N, C, ...), got shape {tuple(log_prob.shape)}")
    target = target.to(torch.int64)
    keep = None if ignore_index is None else target != ignore_index
    # An ignored target may lie outside [0, C) (e.g. -100): gather from class 0 instead, then mask it out.
    safe = target if keep is None else torch.where(keep, target, torch.zeros_like(target))
    picked = -torch.gather(log_prob, 1, safe.unsqueeze(1)).squeeze(1)
    w = None
    if weight is not None:
        w = weight.to(log_prob.dtype)[safe]
    if keep is not None:
        mask = keep.to(log_prob.dtype)
        w = mask if w is None else w * mask
    loss = picked if w is None else picked * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        # The mean is over the weights actually applied: ignored positions and class weights both count.
        return loss.mean() if w is None else loss.sum() / w.sum()
    raise ValueError(f"unknown reduction {reduction!r} (expected 'none', 'sum' or 'mean')")


def _ignore_index(attrs: dict) -> int | None:
    ii = attrs.get("ignore_index")
    return None if ii is None else int(ii)


@ops.op("NegativeLogLikelihoodLoss")
def negative_log_likelihood_loss(ctx: KernelContext, inputs: list, attrs: dict):
    """loss = -input[n, target[n, d...], d...] * weight[target], reduced by 'reduction' (default mean)."""
    x, target = inputs[0], inputs[1]
    weight = inputs[2] if len(inputs) > 2 else None
    work = torch.float32 if x.dtype in _LOW_PRECISION else x.dtype
    loss = _nll(x.to(work), target, weight, attrs.get("reduction", "mean"), _ignore_index(attrs))
    return loss.to(x.dtype)


@ops.op("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(ctx: KernelContext, inputs: list, attrs: dict):
    """NLL loss of log_softmax(scores) over axis 1; the optional second output is that log_softmax."""
    scores, labels = inputs[0], inputs[1]
    weight = inputs[2] if len(inputs) > 2 else None
    work = torch.float32 if scores.dtype in _LOW_PRECISION else scores.dtype
    log_prob = torch.log_softmax(scores.to(work), dim=1)
    loss = _nll(log_prob, labels, weight, attrs.get("reduction", "mean"), _ignore_index(attrs))
    return loss.to(scores.dtype), log_prob.to(scores.dtype)
