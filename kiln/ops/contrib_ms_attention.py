"""onnxruntime's com.microsoft attention ops: Attention (packed QKV projection), MultiHeadAttention and
RotaryEmbedding. GroupQueryAttention is in ``contrib_ms_gqa``.

Masks follow onnxruntime's CPU kernels: a masked key gets ``mask_filter_value`` (-10000 by default) added
to its score, not -inf, so a row with every key masked still has a (near uniform) softmax; keys past the causal
(unidirectional) frontier are left out entirely (-inf), and the frontier always keeps the query's own key.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UnsupportedOpError
from .attention_rotary import rotary_embedding as onnx_rotary_embedding
from .registry import KernelContext, OpSet

MS = "com.microsoft"
ops = OpSet("contrib_ms_attention")


def _refuse(ctx: KernelContext, op: str, why: str):
    return UnsupportedOpError([(ctx.node_name, MS, op, why)])


def heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, N*H) -> (B, N, S, H)."""
    b, s, _ = x.shape
    return x.reshape(b, s, heads, -1).transpose(1, 2)


def heads_last(x: torch.Tensor) -> torch.Tensor:
    """(B, N, S, H) -> (B, S, N*H)."""
    return x.transpose(1, 2).flatten(2)


def key_mask_bias(ctx: KernelContext, op: str, mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int,
                  filter_value: float, dtype: torch.dtype) -> torch.Tensor | None:
    """An additive (B, 1, S or 1, T) bias from onnxruntime's mask_index forms: (B) key lengths, (2B) end and start
    positions, (B, T) or (B, S, T) 0/1 masks; a (1, 1) or (B, 1) mask is a placeholder meaning no mask."""
    if mask is None:
        return None
    j = torch.arange(kv_len, device=mask.device)
    fill = torch.tensor(filter_value, dtype=dtype, device=mask.device)
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    if mask.dim() == 1 and mask.shape[0] in (batch, 2 * batch):
        end = mask[:batch].long().reshape(batch, 1)
        masked = j.reshape(1, -1) >= end
        if mask.shape[0] == 2 * batch and batch > 0:
            start = mask[batch:].long().clamp(max=kv_len).reshape(batch, 1)
            masked = masked | (j.reshape(1, -1) < start)
        return torch.where(masked, fill, zero).reshape(batch, 1, 1, kv_len)
    if mask.dim() == 2 and mask.shape[1] == 1 and kv_len != 1:
        return None
    if mask.dim() == 2:
        return torch.where(mask > 0, zero, fill).reshape(mask.shape[0], 1, 1, mask.shape[1])
    if mask.dim() == 3:
        return torch.where(mask > 0, zero, fill).unsqueeze(1)
    raise _refuse(ctx, op, f"a mask of shape {tuple(mask.shape)} is not supported (Kiln takes (B), (2B), (B, T) "
                           f"and (B, S, T) masks)")


def causal_bias(q_len: int, kv_len: int, past: int, dtype, device) -> torch.Tensor:
    """(S, T) bias leaving out (-inf) the keys after each query's position (past + i)."""
    i = torch.arange(q_len, device=device).reshape(-1, 1)
    j = torch.arange(kv_len, device=device).reshape(1, -1)
    fill = torch.tensor(float("-inf"), dtype=dtype, device=device)
    return torch.where(j > i + past, fill, torch.zeros((), dtype=dtype, device=device))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q @ k^T * scale + bias) @ v on (B, N, S, H) tensors; k, v may have fewer heads (grouped)."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if bias is not None:
        bias = bias.to(q.dtype).expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def _sum_biases(*biases):
    out = None
    for b in biases:
        if b is not None:
            out = b if out is None else out + b
    return out


# --- Attention (input projection inside) ---------------------------------------------------------------------
def _check_attention(attrs: dict, given: list, used: list) -> str | None:
    if attrs.get("do_rotary", 0):
        return "attribute do_rotary=1 is not supported (onnxruntime's CPU kernel has no rotary either)"
    if attrs.get("past_present_share_buffer", 0):
        return "attribute past_present_share_buffer=1 is not supported"
    return None


@ops.op("Attention", domain=MS, check=_check_attention)
def attention(ctx: KernelContext, inputs: list, attrs: dict):
    """Multi-head self-attention of x with its Q/K/V projection (x @ W + bias), masks, past/present KV."""
    x, w, bias, mask, past, attn_bias = (list(inputs) + [None] * 6)[:6]
    heads = int(attrs["num_heads"])
    sizes = list(attrs.get("qkv_hidden_sizes", [])) or [w.shape[1] // 3] * 3
    qkv = torch.matmul(x, w)
    if bias is not None:
        qkv = qkv + bias
    q, k, v = (heads_first(t, heads) for t in torch.split(qkv, sizes, dim=-1))
    past_len = 0
    if past is not None:
        past_len = past.shape[3]
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    y = _attention_core(ctx, "Attention", q, k, v, mask, attn_bias, past_len, attrs)
    return (y, torch.stack([k, v])) if ctx.wants(1) else y


def _attention_core(ctx, op: str, q, k, v, mask, attn_bias, past_len: int, attrs: dict) -> torch.Tensor:
    b, _, s, head = q.shape
    t = k.shape[2]
    filter_value = float(attrs.get("mask_filter_value", -10000.0))
    scale = float(attrs.get("scale", 0.0)) or 1.0 / math.sqrt(head)
    causal = causal_bias(s, t, past_len, q.dtype, q.device) if attrs.get("unidirectional", 0) else None
    bias = _sum_biases(key_mask_bias(ctx, op, mask, b, s, t, filter_value, q.dtype), causal, attn_bias)
    return heads_last(attend(q, k, v, bias, scale))


# --- MultiHeadAttention ---------------------------------------------------------------------------------------
def _check_mha(attrs: dict, given: list, used: list) -> str | None:
    if len(given) > 9 and given[9]:
        return "input cache_indirection (beam search) is not supported"
    if len(used) > 3 and used[3]:
        return "output qk is not supported"
    return None


@ops.op("MultiHeadAttention", domain=MS, check=_check_mha)
def multi_head_attention(ctx: KernelContext, inputs: list, attrs: dict):
    """Attention of projected Q, K, V (separate, packed KV or packed QKV, or BNSH keys), with optional bias,
    key padding mask, attention bias and past/present KV."""
    query, key, value, bias, mask, attn_bias, past_k, past_v = (list(inputs) + [None] * 8)[:8]
    heads = int(attrs["num_heads"])
    if query.dim() == 5:  # packed QKV (B, S, N, 3, H)
        q, k, v = (query[:, :, :, i].transpose(1, 2) for i in range(3))
    else:
        if bias is not None and key is not None and key.dim() == 3:
            dq = query.shape[-1]
            dk = key.shape[-1]
            query, key, value = query + bias[:dq], key + bias[dq:dq + dk], value + bias[dq + dk:]
        elif bias is not None:
            query = query + bias[:query.shape[-1]]
        q = heads_first(query, heads)
        if key.dim() == 5:  # packed KV (B, L, N, 2, H)
            k, v = key[:, :, :, 0].transpose(1, 2), key[:, :, :, 1].transpose(1, 2)
        elif key.dim() == 4:  # already (B, N, L, H)
            k, v = key, value
        else:
            k, v = heads_first(key, heads), heads_first(value, heads)
    past_len = 0
    if past_k is not None and past_v is not None:
        past_len = past_k.shape[2]
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
    return _attention_core(ctx, "MultiHeadAttention", q, k, v, mask, attn_bias, past_len, attrs), k, v


@ops.op("KeyMaskBias", domain="kiln")
def key_mask_bias_op(ctx: KernelContext, inputs: list, attrs: dict):
    """kiln::KeyMaskBias(mask_index, key): the additive (B, 1, 1 or S, T) bias of a contrib attention mask, made by
    the lower_contrib_ms pass for the attention layer it builds; ``key`` (B, T, D) gives the key length."""
    mask, key = inputs[:2]
    return key_mask_bias(ctx, "KeyMaskBias", mask, key.shape[0], key.shape[1], key.shape[1],
                         float(attrs.get("filter_value", -10000.0)), key.dtype)


# --- RotaryEmbedding --------------------------------------------------------------------------------------------
def _check_rotary(attrs: dict, given: list, used: list) -> str | None:
    if attrs.get("is_packed_batching", 0):
        return "attribute is_packed_batching=1 is not supported"
    return None


@ops.op("RotaryEmbedding", domain=MS, check=_check_rotary)
def rotary_embedding(ctx: KernelContext, inputs: list, attrs: dict):
    """Rotary position embedding; position_ids is (B, S), or one number: the first position of every row."""
    x, pos, cos, sin = inputs[:4]
    b, s = x.shape[0], x.shape[-2] if x.dim() == 4 else x.shape[1]
    if pos.numel() == 1:
        pos = pos.reshape(1, 1).long() + torch.arange(s, device=x.device).reshape(1, s)
    pos = pos.long().expand(b, s)
    rot = int(attrs.get("rotary_embedding_dim", 0))
    heads = int(attrs.get("num_heads", 0))
    if x.dim() == 3 and heads == 0:
        heads = x.shape[-1] // (rot or 2 * cos.shape[-1])  # full-width rotation over heads of the cache's size
    onnx_attrs = {"interleaved": int(attrs.get("interleaved", 0)), "num_heads": heads}
    if rot:
        onnx_attrs["rotary_embedding_dim"] = rot
    return onnx_rotary_embedding(ctx, [x, cos, sin, pos], onnx_attrs)
