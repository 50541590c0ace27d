"""onnxruntime's com.microsoft GroupQueryAttention: causal attention of N query heads over kv_num_heads key/value
heads, with a KV cache filled per batch row at its own length, optional rotary, softcap, local window, smooth
softmax / head sinks and attention bias.

Each batch row b holds ``seqlens_k[b] + 1`` valid keys after this step. On the first prompt (no past, or an empty
one) its new tokens are positions 0..S-1, the keys past the row's length being padding; later its S new tokens
follow the row's past, at positions ``seqlens_k[b] + 1 - S`` on. Everything is computed with tensor index
arithmetic (no per-row Python loop), so the kernel also runs on meta tensors for shape propagation.
"""
from __future__ import annotations

import math

import torch

from .attention_rotary import rotary_embedding as onnx_rotary_embedding
from .contrib_ms_attention import heads_first, heads_last
from .registry import KernelContext, OpSet

MS = "com.microsoft"
ops = OpSet("contrib_ms_gqa")


def _check_gqa(attrs: dict, given: list, used: list) -> str | None:
    if attrs.get("qk_output", 0) or (len(used) > 3 and used[3]):
        return "output output_qk (qk_output != 0) is not supported"
    return None


def _rotate(ctx, x: torch.Tensor, pos: torch.Tensor, cos, sin, interleaved: int) -> torch.Tensor:
    """Rotary embedding of (B, N, S, H) ``x`` at (B, S) positions, over the first 2 * cos.shape[1] features."""
    attrs = {"interleaved": interleaved, "rotary_embedding_dim": 2 * cos.shape[-1]}
    return onnx_rotary_embedding(ctx, [x, cos, sin, pos], attrs)


def _fill_cache(past: torch.Tensor | None, new: torch.Tensor, start: torch.Tensor, length: int) -> torch.Tensor:
    """(B, Nkv, length, H): the past up to each row's ``start``, the row's new tokens from there, zeros after."""
    b, n, s, h = new.shape
    t = torch.arange(length, device=new.device).reshape(1, length)
    rel = t - start.reshape(b, 1)  # index into the new tokens
    take_new = (rel >= 0) & (rel < s)
    idx = rel.clamp(0, max(s - 1, 0)).reshape(b, 1, length, 1).expand(b, n, length, h)
    out = torch.gather(new, 2, idx)
    if past is not None and past.shape[2] > 0:
        p = past.shape[2]
        if p < length:
            past = torch.cat([past, past.new_zeros(b, n, length - p, h)], dim=2)
        keep_past = (t < start.reshape(b, 1)) & (t < p)
        out = torch.where(take_new.reshape(b, 1, length, 1), out,
                          torch.where(keep_past.reshape(b, 1, length, 1), past[:, :, :length], 0.0))
    else:
        out = torch.where(take_new.reshape(b, 1, length, 1), out, 0.0)
    return out


@ops.op("GroupQueryAttention", domain=MS, check=_check_gqa)
def group_query_attention(ctx: KernelContext, inputs: list, attrs: dict):
    """Causal grouped-query attention with a per-row KV cache (see the module doc)."""
    query, key, value, past_k, past_v, seqlens, total, cos, sin, pos_ids, attn_bias, head_sink = \
        (list(inputs) + [None] * 12)[:12]
    n, n_kv = int(attrs["num_heads"]), int(attrs["kv_num_heads"])
    b, s = query.shape[:2]
    if key is None:  # packed QKV
        head = query.shape[-1] // (n + 2 * n_kv)
        query, key, value = torch.split(query, [n * head, n_kv * head, n_kv * head], dim=-1)
    q, k, v = heads_first(query, n), heads_first(key, n_kv), heads_first(value, n_kv)
    head = q.shape[-1]

    past_len = past_k.shape[2] if past_k is not None else 0
    total_len = int(total.reshape(-1)[0]) if total is not None else past_len + s
    valid = seqlens.long().reshape(b) + 1  # keys each row holds after this step
    first_prompt = past_len == 0
    start = torch.zeros_like(valid) if first_prompt else valid - s  # position of the row's first new token

    pos = start.reshape(b, 1) + torch.arange(s, device=q.device).reshape(1, s)
    if attrs.get("do_rotary", 0):
        rot_pos = pos_ids.long().expand(b, s) if pos_ids is not None else pos
        inter = int(attrs.get("rotary_interleaved", 0))
        q, k = _rotate(ctx, q, rot_pos, cos, sin, inter), _rotate(ctx, k, rot_pos, cos, sin, inter)

    length = max(past_len, total_len) if past_k is not None else total_len
    present_k, present_v = _fill_cache(past_k, k, start, length), _fill_cache(past_v, v, start, length)

    j = torch.arange(length, device=q.device).reshape(1, 1, length)
    qpos = pos.reshape(b, s, 1)
    keep = (j <= qpos) & (j < valid.reshape(b, 1, 1))
    window = int(attrs.get("local_window_size", -1))
    if window > 0:
        keep = keep & (qpos - j < window)
    group = n // n_kv
    kk, vv = present_k.repeat_interleave(group, dim=1), present_v.repeat_interleave(group, dim=1)
    scale = float(attrs.get("scale", 0.0)) or 1.0 / math.sqrt(head)
    scores = torch.matmul(q, kk.transpose(-1, -2)) * scale
    softcap = float(attrs.get("softcap", 0.0))
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if attn_bias is not None:
        scores = scores + attn_bias[..., :length]
    scores = scores.masked_fill(~keep.unsqueeze(1), float("-inf"))
    if head_sink is not None or attrs.get("smooth_softmax", 0):
        # An extra logit (the head's sink, or 0 for smooth softmax) joins each row's softmax and is dropped.
        sink = head_sink.reshape(1, n, 1, 1).to(scores.dtype) if head_sink is not None else scores.new_zeros(())
        sink = sink.expand(b, n, s, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    y = heads_last(torch.matmul(probs, vv))
    return y, present_k, present_v
