"""Ops of the 'attention' family: Attention (opset 23+), RotaryEmbedding, LinearAttention.

Attention builds one mask description for every masking source (attn_mask, is_causal with its
cache offset, sliding windows, nonpad_kv_seqlen padding) and then runs either torch's fused
scaled_dot_product_attention or, where the op asks for things SDPA cannot give (softcap, the
qk_matmul_output debug output, a softmax precision other than the input's), an explicit graph.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ir.dtype import DType
from .attention_linear import linear_attention
from .attention_rotary import rotary_embedding
from .registry import KernelContext, OpSet

ops = OpSet("attention")
ops.add("RotaryEmbedding", rotary_embedding)
ops.add("LinearAttention", linear_attention)

_NEG_INF = float("-inf")


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, H*D) -> (B, H, S, D)."""
    b, s, hd = x.shape
    return x.reshape(b, s, heads, hd // heads).transpose(1, 2)


def _structural_keep(q_len: int, kv_len: int, offset, causal: bool, left: int, right: int,
                     nonpad: torch.Tensor | None, device) -> torch.Tensor | None:
    """Which (query, key) pairs the causal frontier, the windows and the padding allow.

    ``offset`` is the number of valid keys before the query block: an int (internal cache or none)
    or a (B,) tensor (external cache, nonpad_kv_seqlen - q_len). Returns None when nothing is masked,
    else a bool tensor of shape (q, kv) or (B, 1, q, kv).
    """
    if not causal and left < 0 and right < 0 and nonpad is None:
        return None
    i = torch.arange(q_len, device=device).reshape(q_len, 1)
    j = torch.arange(kv_len, device=device).reshape(1, kv_len)
    if isinstance(offset, torch.Tensor):
        pos = i + offset.to(device=device, dtype=torch.int64).reshape(-1, 1, 1, 1)  # absolute query position
    else:
        pos = i + offset
    keep = torch.ones(pos.shape[:-1] + (kv_len,), dtype=torch.bool, device=device)
    if causal:
        keep = keep & (j <= pos)
    if left >= 0:
        keep = keep & (pos - j <= left)
    if right >= 0:
        keep = keep & (j - pos <= right)
    if nonpad is not None:
        keep = keep & (j < nonpad.to(device=device, dtype=torch.int64).reshape(-1, 1, 1, 1))
    return keep


def _pad_mask(mask: torch.Tensor, kv_len: int) -> torch.Tensor:
    """The spec lets the mask's key axis be shorter than the keys: missing keys are masked out."""
    short = kv_len - mask.shape[-1]
    if short <= 0:
        return mask
    fill = False if mask.dtype == torch.bool else _NEG_INF
    return F.pad(mask, (0, short), value=fill)


def _mask_terms(mask, keep):
    """Combine a user mask with the structural keep-set.

    Returns (keep, bias): a bool keep-set when every source is boolean (bias None), else an additive
    float bias with -inf at disallowed keys (keep None). Either may be None when nothing masks.
    """
    if mask is not None and mask.dtype == torch.bool:
        keep = mask if keep is None else keep & mask
        mask = None
    if mask is None:
        return keep, None
    bias = mask if keep is None else mask.masked_fill(~keep, _NEG_INF)
    return None, bias


def _dead_rows(keep, bias) -> torch.Tensor | None:
    """Query rows with no attendable key: the spec makes their output (and probabilities) zero."""
    if keep is not None:
        return ~keep.any(dim=-1, keepdim=True)
    if bias is not None:
        return (bias == _NEG_INF).all(dim=-1, keepdim=True)
    return None


def _softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap if cap > 0 else x


@ops.op("Attention")
def attention(ctx: KernelContext, inputs: list, attrs: dict):
    """Scaled dot-product attention with GQA, masks, KV cache, softcap and sliding windows."""
    q, k, v = inputs[:3]
    mask, past_k, past_v, nonpad = (list(inputs[3:7]) + [None] * 4)[:4]
    is_causal = bool(attrs.get("is_causal", 0))
    softcap = float(attrs.get("softcap", 0.0))
    mode = int(attrs.get("qk_matmul_output_mode", 0))
    left, right = int(attrs.get("left_window_size", -1)), int(attrs.get("right_window_size", -1))
    sm_precision = attrs.get("softmax_precision")
    if (past_k is None) != (past_v is None):
        raise ValueError("Attention: past_key and past_value must be given together")

    three_d = q.dim() == 3
    if three_d:
        q = _split_heads(q, int(attrs["q_num_heads"]))
        k = _split_heads(k, int(attrs["kv_num_heads"]))
        v = _split_heads(v, int(attrs["kv_num_heads"]))
    if past_k is not None:
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
    present_k, present_v = k, v

    b, hq, q_len, head = q.shape
    hkv, kv_len = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"Attention: q_num_heads {hq} is not a multiple of kv_num_heads {hkv}")
    scale = float(attrs["scale"]) if "scale" in attrs else 1.0 / math.sqrt(head)

    # The causal/window frontier sits `offset` keys to the right: past length for an internal
    # cache, per-batch nonpad_kv_seqlen - q_len for an external one.
    if past_k is not None:
        offset = past_k.shape[2]
    elif nonpad is not None:
        offset = nonpad.reshape(-1) - q_len
    else:
        offset = 0
    # With no cache and nothing else masking, SDPA's own (top-left) causal mask is the same thing.
    plain_causal = is_causal and mask is None and left < 0 and right < 0 and past_k is None and nonpad is None
    keep = _structural_keep(q_len, kv_len, offset, is_causal, left, right, nonpad, q.device)
    if mask is not None:
        mask = _pad_mask(mask, kv_len)
        if mask.dim() < 2:  # a key-only mask: give it its (broadcast) query axis
            mask = mask.reshape(1, -1)
        if mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
    keep, bias = _mask_terms(mask, keep)
    dead = _dead_rows(keep, bias)

    out_dtype = q.dtype
    half = out_dtype in (torch.float16, torch.bfloat16)
    sm_dtype = DType(int(sm_precision)).torch if sm_precision is not None else None
    # The fused kernel hides the scores and runs the softmax at the input's precision (float32 for half types).
    native_softmax = sm_dtype is None or sm_dtype == out_dtype or (half and sm_dtype == torch.float32)
    fused_ok = softcap <= 0 and not ctx.wants(3) and native_softmax
    if half:
        # Half types are computed in float32 and rounded once at the end: torch's half attention kernels
        # (flash on CUDA, the CPU kernel) round scores or probabilities to half on the way, which drifts
        # several ulps from the spec's result, past the ONNX suite's tolerance.
        q, k, v = q.float(), k.float(), v.float()
        bias = bias.float() if bias is not None else None
    if fused_ok and plain_causal:
        y, qk_out = _fused(q, k, v, None, None, None, True, scale), None
    elif fused_ok:
        y, qk_out = _fused(q, k, v, keep, bias, dead, False, scale), None
    else:
        y, qk_out = _explicit(q, k, v, keep, bias, dead, scale, softcap, mode, sm_dtype or q.dtype)
        qk_out = qk_out.to(out_dtype)
    y = y.to(out_dtype)

    if three_d:
        y = y.transpose(1, 2).reshape(b, q_len, -1)
    return y, present_k, present_v, qk_out


def _fused(q, k, v, keep, bias, dead, causal: bool, scale: float) -> torch.Tensor:
    mask = keep if keep is not None else bias
    if dead is not None:
        # A fully masked row would softmax to NaN; let it attend anything, then zero it.
        mask = (mask | dead) if mask.dtype == torch.bool else mask.masked_fill(dead, 0.0)
    gqa = q.shape[1] != k.shape[1]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=gqa)
    if dead is not None:
        y = y.masked_fill(dead, 0.0)
    return y


def _explicit(q, k, v, keep, bias, dead, scale: float, softcap: float, mode: int, sm_dtype):
    """Attention step by step, for the outputs and options the fused kernel hides."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = _softcap(scores, softcap)
    qk_out = scores  # modes 0 and 1: before the mask (mode 1 differs from 0 only when softcap is set)
    if keep is not None:
        zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
        bias = torch.where(keep, zero, _NEG_INF)
    if bias is not None:
        scores = scores + bias
    if mode == 2:
        qk_out = scores
    probs = torch.softmax(scores.to(sm_dtype), dim=-1)
    if dead is not None:
        probs = probs.masked_fill(dead, 0.0)
    if mode == 3:
        qk_out = probs
    probs = probs.to(q.dtype)
    return torch.matmul(probs, v), qk_out
