"""LinearAttention: recurrent linear attention (linear, gated, delta and gated-delta rules) with GQA.

The state S (B, H_kv, d_k, d_v) is updated token by token; the loop runs over the sequence axis only,
each step being batched tensor ops over batch, heads and features.
"""
from __future__ import annotations

import math

import torch

from .registry import KernelContext

_RULES = ("linear", "gated", "delta", "gated_delta")


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, H*D) -> (B, H, T, D)."""
    b, t, hd = x.shape
    return x.reshape(b, t, heads, hd // heads).transpose(1, 2)


def linear_attention(ctx: KernelContext, inputs: list, attrs: dict):
    """S_t = a_t * S_{t-1} + k_t (x) u_t, o_t = scale * q_t^T S_t, with a_t and u_t set by update_rule."""
    query, key, value = inputs[:3]
    past, decay, beta = (list(inputs[3:6]) + [None] * 3)[:3]
    rule = attrs.get("update_rule", "gated_delta")
    if rule not in _RULES:
        raise ValueError(f"LinearAttention: unknown update_rule {rule!r}")
    hq, hkv = int(attrs["q_num_heads"]), int(attrs["kv_num_heads"])
    if hq <= 0 or hkv <= 0 or hq % hkv:
        raise ValueError(f"LinearAttention: q_num_heads {hq} must be a positive multiple of kv_num_heads {hkv}")
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gated != (decay is not None) or delta != (beta is not None):
        raise ValueError(f"LinearAttention: update_rule {rule!r} needs decay={gated}, beta={delta}")

    # Accumulate in at least float32: the state sums many outer products.
    work = torch.promote_types(query.dtype, torch.float32)
    b, t, _ = query.shape
    d_k = query.shape[-1] // hq
    q = _heads(query, hq).to(work)
    k = _heads(key, hkv).to(work)
    v = _heads(value, hkv).to(work)
    d_v = v.shape[-1]
    group = hq // hkv
    scale = float(attrs.get("scale", 0.0)) or 1.0 / math.sqrt(d_k)

    if decay is not None:
        # Per-head scalar decay (B, T, H) or per-key-feature decay (B, T, H*d_k).
        g = _heads(decay, hkv).to(work)  # (B, H, T, 1 or d_k)
        decay_t = torch.exp(g).unsqueeze(-1)  # broadcasts over d_v
    if beta is not None:
        beta4 = beta.reshape(b, t, beta.shape[-1], 1).transpose(1, 2).to(work)  # (B, H or 1, T, 1)

    state = past.to(work) if past is not None else torch.zeros(b, hkv, d_k, d_v, dtype=work, device=query.device)
    outs = []
    for i in range(t):
        k_t, v_t = k[:, :, i], v[:, :, i]
        if gated:
            state = state * decay_t[:, :, i]
        if delta:
            recalled = torch.einsum("bhkv,bhk->bhv", state, k_t)
            v_t = beta4[:, :, i] * (v_t - recalled)
        state = state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        # Query heads of one group share their KV head's state.
        q_t = q[:, :, i].reshape(b, hkv, group, d_k)
        outs.append(torch.einsum("bhgk,bhkv->bhgv", q_t, state).reshape(b, hq, d_v) * scale)
    out = torch.stack(outs, dim=2) if outs else q.new_zeros(b, hq, 0, d_v)
    out = out.transpose(1, 2).reshape(b, t, hq * d_v).to(query.dtype)
    state_dtype = past.dtype if past is not None else query.dtype
    return out, state.to(state_dtype)
