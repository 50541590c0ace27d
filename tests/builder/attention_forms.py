"""The attention forms vision transformers and common exporters emit, as tiny torch modules.

Each entry: a module factory, its example inputs, and the number of attention blocks in it. The modules mirror
torchvision's vision_transformer.py (nn.MultiheadAttention inside an encoder block), timm's Attention (packed qkv,
explicit or through F.scaled_dot_product_attention), Swin's window attention (relative position bias and the
shifted-window mask) and a few hand-written score forms (baddbmm, pre-scaled Q, scale split over Q and K).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

DIM, HEADS = 32, 4


class MHA(nn.Module):
    """nn.MultiheadAttention as a model calls it; ``need_weights=True`` (the default) also returns the averaged
    probabilities."""

    def __init__(self, batch_first=True, need_weights=False, bias=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first, bias=bias)
        self.need_weights = need_weights

    def forward(self, x):
        y, w = self.attn(x, x, x, need_weights=self.need_weights)
        return (y, w) if self.need_weights else y


class EncoderBlock(nn.Module):
    """torchvision's ViT EncoderBlock."""

    def __init__(self, heads, dim, mlp_dim):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(0.0))

    def forward(self, input):
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x)
        x = x + input
        y = self.ln_2(x)
        y = self.mlp(y)
        return x + y


class ViT(nn.Module):
    """torchvision's VisionTransformer, tiny: conv patchify, class token, position embedding, encoder blocks."""

    def __init__(self, image=32, patch=8, layers=2, heads=HEADS, dim=DIM, mlp_dim=64, classes=10):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.conv_proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        seq = (image // patch) ** 2 + 1
        self.pos_embedding = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
        self.layers = nn.Sequential(*[EncoderBlock(heads, dim, mlp_dim) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.heads = nn.Linear(dim, classes)

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1) + self.pos_embedding
        x = self.ln(self.layers(x))
        return self.heads(x[:, 0])


class TimmAttention(nn.Module):
    """timm's Attention: packed qkv, q pre-scaled (or F.scaled_dot_product_attention when ``fused``)."""

    def __init__(self, fused=False, dim=DIM, heads=HEADS):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            q = q * self.scale
            attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
            x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class ScoreForms(nn.Module):
    """Separate q/k/v projections, heads split [B, H, S, D], and one way of scaling the scores:

    "div": (q @ k^T) / sqrt(d);  "split": (q * d^-1/4) @ (k^T * d^-1/4);  "k": q @ (k * d^-1/2)^T;
    "baddbmm": baddbmm(bias, q, k^T, alpha=d^-1/2) on [B*H, S, D] (bias None: beta=0 over an empty tensor, as
    transformers' GPT-2 upcast path does)."""

    def __init__(self, form, bias=False, dim=DIM, heads=HEADS, seq=8):
        super().__init__()
        self.form, self.heads = form, heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.bias = nn.Parameter(torch.randn(heads, seq, seq) * 0.1) if bias else None

    def forward(self, x):
        B, S, C = x.shape
        H, D = self.heads, C // self.heads
        q, k, v = (p(x).view(B, S, H, D).transpose(1, 2) for p in (self.q, self.k, self.v))
        if self.form == "div":
            scores = q @ k.transpose(-2, -1) / math.sqrt(D)
        elif self.form == "split":
            s = 1 / math.sqrt(math.sqrt(D))
            scores = (q * s) @ (k.transpose(-2, -1) * s)
        elif self.form == "k":
            scores = q @ (k * D ** -0.5).transpose(-2, -1)
        else:  # baddbmm
            q3, k3 = q.reshape(B * H, S, D), k.reshape(B * H, S, D)
            if self.bias is None:
                base, beta = torch.empty(B * H, S, S, dtype=q.dtype), 0.0
            else:
                base, beta = self.bias.repeat(B, 1, 1), 1.0
            scores = torch.baddbmm(base, q3, k3.transpose(1, 2), beta=beta, alpha=D ** -0.5).view(B, H, S, S)
        y = scores.softmax(-1) @ v
        return self.o(y.transpose(1, 2).reshape(B, S, C))


def _relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


class WindowAttention(nn.Module):
    """Swin's WindowAttention: relative position bias gathered from a table, the shifted-window mask added
    through a [B/nW, nW, H, N, N] view of the scores."""

    def __init__(self, dim, window, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        self.register_buffer("relative_position_index", _relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, N, N)
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


class SwinBlock(nn.Module):
    """Swin's block on a [B, Hf, Wf, C] map: cyclic shift, window partition, window attention, reverse."""

    def __init__(self, dim=DIM, size=8, window=4, shift=0, heads=2):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        if shift:
            img = torch.zeros(1, size, size, 1)
            cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
            for n, (h, w) in enumerate((h, w) for h in cuts for w in cuts):
                img[:, h, w, :] = n
            win = self._partition(img).squeeze(-1)
            mask = win.unsqueeze(1) - win.unsqueeze(2)
            self.register_buffer("attn_mask", mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0))
        else:
            self.attn_mask = None

    def _partition(self, x):
        B, H, W, C = x.shape
        w = self.window
        x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, w * w, C)

    def forward(self, x):
        B, H, W, C = x.shape
        y = self.norm(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(self._partition(y), mask=self.attn_mask)
        w = self.window
        y = y.view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        return x + y


class Swin(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(SwinBlock(shift=0), SwinBlock(shift=2))

    def forward(self, x):
        return self.blocks(x)


def _hf(kind):
    """transformers' vision models with tiny random configs (eager attention: the decomposed form)."""
    import transformers as T
    common = dict(hidden_size=DIM, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64,
                  image_size=32, patch_size=8)
    if kind == "vit":
        model = T.ViTModel(T.ViTConfig(**common), add_pooling_layer=False)
    elif kind == "deit":
        model = T.DeiTModel(T.DeiTConfig(**common), add_pooling_layer=False)
    elif kind == "beit":
        model = T.BeitModel(T.BeitConfig(**common, use_relative_position_bias=True), add_pooling_layer=False)
    elif kind == "clip":
        model = T.CLIPVisionModel(T.CLIPVisionConfig(**common))
    elif kind in ("swin", "swinv2"):
        cfg = (T.SwinConfig if kind == "swin" else T.Swinv2Config)(
            image_size=32, patch_size=2, embed_dim=16, depths=[2], num_heads=[2], window_size=4)
        model = (T.SwinModel if kind == "swin" else T.Swinv2Model)(cfg, add_pooling_layer=False)
    model.config._attn_implementation = "eager"
    return _FirstOutput(model)


class _FirstOutput(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).last_hidden_state


def _seq(b=2, s=8):
    return (torch.randn(b, s, DIM),)


# name -> (factory, example inputs, attention blocks)
FORMS = {
    "mha_batch_first": (lambda: MHA(batch_first=True), lambda: _seq(), 1),
    "mha_seq_first": (lambda: MHA(batch_first=False), lambda: (torch.randn(8, 2, DIM),), 1),
    "mha_no_bias": (lambda: MHA(bias=False), lambda: _seq(), 1),
    "mha_need_weights": (lambda: MHA(need_weights=True), lambda: _seq(), 1),
    "vit_torchvision": (lambda: ViT(), lambda: (torch.randn(2, 3, 32, 32),), 2),
    "timm": (lambda: TimmAttention(), lambda: _seq(2, 10), 1),
    "timm_fused": (lambda: TimmAttention(fused=True), lambda: _seq(2, 10), 1),
    "div_sqrt_d": (lambda: ScoreForms("div"), lambda: _seq(), 1),
    "scale_split_qk": (lambda: ScoreForms("split"), lambda: _seq(), 1),
    "scale_on_k": (lambda: ScoreForms("k"), lambda: _seq(), 1),
    "baddbmm_beta0": (lambda: ScoreForms("baddbmm"), lambda: _seq(), 1),
    "baddbmm_bias": (lambda: ScoreForms("baddbmm", bias=True), lambda: _seq(), 1),
    "swin_window": (lambda: Swin(), lambda: (torch.randn(2, 8, 8, DIM),), 2),
    "hf_vit": (lambda: _hf("vit"), lambda: (torch.randn(2, 3, 32, 32),), 2),
    "hf_deit": (lambda: _hf("deit"), lambda: (torch.randn(2, 3, 32, 32),), 2),
    "hf_beit": (lambda: _hf("beit"), lambda: (torch.randn(2, 3, 32, 32),), 2),
    "hf_clip": (lambda: _hf("clip"), lambda: (torch.randn(2, 3, 32, 32),), 2),
    "hf_swin": (lambda: _hf("swin"), lambda: (torch.randn(2, 3, 32, 32),), 2),
    "hf_swinv2": (lambda: _hf("swinv2"), lambda: (torch.randn(2, 3, 32, 32),), 2),
}
