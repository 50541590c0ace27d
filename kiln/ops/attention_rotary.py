"""RotaryEmbedding (opset 23): rotary position embedding, half-split or interleaved, full or partial."""
from __future__ import annotations

import torch

from .registry import KernelContext


def rotary_embedding(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    """Rotate pairs of features of X by position-dependent angles given as cos/sin caches."""
    x, cos, sin = inputs[:3]
    pos = inputs[3] if len(inputs) > 3 else None
    interleaved = bool(attrs.get("interleaved", 0))

    # Work in (B, S, H, D): the caches are indexed by (batch, position).
    if x.dim() == 4:
        xs = x.transpose(1, 2)
    else:
        b, s, hidden = x.shape
        heads = int(attrs["num_heads"])
        xs = x.reshape(b, s, heads, hidden // heads)
    head = xs.shape[-1]
    rot = int(attrs.get("rotary_embedding_dim", 0)) or head

    if pos is not None:
        cos, sin = cos[pos.long()], sin[pos.long()]  # (B, S, rot/2)
    cos, sin = cos.unsqueeze(2).to(x.dtype), sin.unsqueeze(2).to(x.dtype)

    x_rot, x_pass = xs[..., :rot], xs[..., rot:]
    if interleaved:
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
    else:
        x1, x2 = x_rot.chunk(2, dim=-1)
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        rotated = torch.stack((real, imag), dim=-1).flatten(-2)
    else:
        rotated = torch.cat((real, imag), dim=-1)
    out = torch.cat((rotated, x_pass), dim=-1)
    return out.transpose(1, 2) if x.dim() == 4 else out.reshape(x.shape)
