"""Ops of the 'rnn' family: RNN, GRU and LSTM (opset 7-22 forms; layout, directions, sequence_lens).

One driver handles what the three share: layouts, directions, initial states, the input projection
of all time steps at once, per-sample sequence lengths and the outputs. Each op supplies only its cell.
The time loop is inherently sequential; every step is batched over samples and hidden units.

The common forms (torch's gates and activations, no clip, no peepholes, every sample running the whole
sequence) run as one call of torch's fused recurrent kernel instead (rnn_fused.py): oneDNN on the CPU,
cuDNN on the GPU. The loop here is the general definition, for every other attribute combination.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .registry import KernelContext, OpSet
from .rnn_fused import default_activations, torch_recurrent

ops = OpSet("rnn")


# Activation name -> (function of x, alpha, beta; default alpha; default beta). Alphas/betas in the node's
# lists are consumed in order by the activations that take them.
_ACTIVATIONS = {
    "relu": (lambda x, a, b: torch.relu(x), None, None),
    "tanh": (lambda x, a, b: torch.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: torch.sigmoid(x), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: F.leaky_relu(x, a), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: torch.where(x > a, x, torch.zeros_like(x)), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * torch.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: torch.clamp(a * x + b, 0.0, 1.0), 0.2, 0.5),
    "elu": (lambda x, a, b: F.elu(x, a), 1.0, None),
    "softsign": (lambda x, a, b: F.softsign(x), None, None),
    "softplus": (lambda x, a, b: F.softplus(x), None, None),
}


def _activations(attrs: dict, defaults: list[str], num_dirs: int) -> list:
    names = attrs.get("activations") or defaults * num_dirs
    if len(names) == len(defaults):  # one set given for a bidirectional node: both directions use it
        names = names * num_dirs
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    fns = []
    for name in names:
        try:
            fn, a, b = _ACTIVATIONS[name.lower()]
        except KeyError:
            raise ValueError(f"unsupported recurrent activation {name!r}") from None
        if a is not None and alphas:
            a = alphas.pop(0)
        if b is not None and betas:
            b = betas.pop(0)
        fns.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b))
    return fns


@dataclass
class _Cell:
    """One direction's weights and activations, as a cell function sees them."""
    w: torch.Tensor      # (G*H, I)
    r: torch.Tensor      # (G*H, H)
    wb: torch.Tensor     # (G*H,)
    rb: torch.Tensor     # (G*H,)
    p: torch.Tensor | None
    acts: list
    clip: float | None


def _clip(x: torch.Tensor, clip: float | None) -> torch.Tensor:
    return x if clip is None else x.clamp(-clip, clip)


def _rnn_step(c: _Cell, xw: torch.Tensor, h: torch.Tensor, s):
    h = c.acts[0](_clip(xw + h @ c.r.T + c.rb, c.clip))
    return h, s


def _gru_step(c: _Cell, xw: torch.Tensor, h: torch.Tensor, s, linear_before_reset: bool):
    f, g = c.acts
    hid = h.shape[-1]
    rz, rr, rh = c.r.split(hid, dim=0)
    bz, br, bh = c.rb.split(hid, dim=0)
    xz, xr, xh = xw.split(hid, dim=-1)
    z = f(_clip(xz + h @ rz.T + bz, c.clip))
    r = f(_clip(xr + h @ rr.T + br, c.clip))
    if linear_before_reset:
        cand = g(_clip(xh + r * (h @ rh.T + bh), c.clip))
    else:
        cand = g(_clip(xh + (r * h) @ rh.T + bh, c.clip))
    return (1 - z) * cand + z * h, s


def _lstm_step(c: _Cell, xw: torch.Tensor, h: torch.Tensor, cell: torch.Tensor, input_forget: bool):
    f, g, act_h = c.acts
    gates = xw + h @ c.r.T + c.rb
    gi, go, gf, gc = gates.chunk(4, dim=-1)
    if c.p is not None:
        pi, po, pf = c.p.chunk(3)
        gi = gi + pi * cell
        gf = gf + pf * cell
    i = f(_clip(gi, c.clip))
    fg = 1 - i if input_forget else f(_clip(gf, c.clip))
    cell = fg * cell + i * g(_clip(gc, c.clip))
    if c.p is not None:
        go = go + po * cell
    o = f(_clip(go, c.clip))
    return o * act_h(cell), cell


def _reverse_index(seq_len: int, lens: torch.Tensor | None, device) -> torch.Tensor:
    """(T, B) time index that reverses each sample within its own length (padding stays in place)."""
    t = torch.arange(seq_len, device=device).unsqueeze(1)
    if lens is None:
        return (seq_len - 1 - t).expand(seq_len, 1)
    lens = lens.to(device=device, dtype=torch.int64).unsqueeze(0)
    return torch.where(t < lens, lens - 1 - t, t)


def _run_direction(cell: _Cell, step, x: torch.Tensor, h0, s0, lens, reverse: bool):
    """Run one direction over x (T, B, I); returns Y (T, B, H), final h and final extra state."""
    seq_len, batch = x.shape[0], x.shape[1]
    if reverse:
        idx = _reverse_index(seq_len, lens, x.device)  # (T, B) or (T, 1)
        x = torch.gather(x, 0, idx.expand(seq_len, batch).unsqueeze(-1).expand_as(x))
    xw = x @ cell.w.T + cell.wb  # input projection of every step in one matmul
    h, s, ys = h0, s0, []
    for t in range(seq_len):
        h_new, s_new = step(cell, xw[t], h, s)
        if lens is None:
            h, s = h_new, s_new
            ys.append(h)
        else:
            # Samples already past their length keep their state and emit zeros.
            live = (t < lens).unsqueeze(-1)
            h = torch.where(live, h_new, h)
            if s is not None:
                s = torch.where(live, s_new, s)
            ys.append(torch.where(live, h_new, torch.zeros_like(h_new)))
    y = torch.stack(ys) if ys else x.new_zeros(0, batch, h0.shape[-1])
    if reverse:
        y = torch.gather(y, 0, idx.expand(seq_len, batch).unsqueeze(-1).expand_as(y))
    return y, h, s


def _recurrent(ctx: KernelContext, inputs: list, attrs: dict, gates: int, default_acts: list[str], step,
               with_cell: bool = False):
    x, w, r = inputs[:3]
    b, lens, h0 = (list(inputs[3:6]) + [None] * 3)[:3]
    c0 = inputs[6] if with_cell and len(inputs) > 6 else None
    p = inputs[7] if with_cell and len(inputs) > 7 else None
    direction = attrs.get("direction", "forward")
    layout = int(attrs.get("layout", 0))
    clip = attrs.get("clip")
    num_dirs = 2 if direction == "bidirectional" else 1
    hidden = int(attrs.get("hidden_size", r.shape[-1]))

    if layout == 1:  # batch-major: (B, T, I) and states (B, D, H)
        x = x.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
        c0 = c0.transpose(0, 1) if c0 is not None else None
    batch = x.shape[1]
    if b is None:
        b = x.new_zeros(num_dirs, 2 * gates * hidden)
    if lens is not None:
        lens = lens.to(device=x.device, dtype=torch.int64)
    zeros = x.new_zeros(num_dirs, batch, hidden)
    h0 = zeros if h0 is None else h0
    c0 = (zeros if c0 is None else c0) if with_cell else None
    acts = _activations(attrs, default_acts, num_dirs)
    n_acts = len(default_acts)

    ys, hs, cs = [], [], []
    for d in range(num_dirs):
        wb, rb = b[d].chunk(2)
        cell = _Cell(w[d], r[d], wb, rb, p[d] if p is not None else None, acts[d * n_acts:(d + 1) * n_acts],
                     float(clip) if clip is not None else None)
        reverse = direction == "reverse" or d == 1
        y, h, c = _run_direction(cell, step, x, h0[d], c0[d] if c0 is not None else None, lens, reverse)
        ys.append(y)
        hs.append(h)
        cs.append(c)

    y = torch.stack(ys, dim=1)  # (T, D, B, H)
    y_h = torch.stack(hs)  # (D, B, H)
    y_c = torch.stack(cs) if with_cell else None
    if layout == 1:
        y = y.permute(2, 0, 1, 3)  # (B, T, D, H)
        y_h = y_h.transpose(0, 1)
        y_c = y_c.transpose(0, 1) if y_c is not None else None
    return (y, y_h, y_c) if with_cell else (y, y_h)


@ops.op("RNN")
def rnn(ctx: KernelContext, inputs: list, attrs: dict):
    """Elman RNN: H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb)."""
    acts = [a.lower() for a in attrs.get("activations") or ["Tanh"]]
    if len(set(acts)) == 1 and acts[0] in ("tanh", "relu"):
        fused = torch_recurrent(inputs, attrs, "rnn_" + acts[0])
        if fused is not None:
            return fused
    return _recurrent(ctx, inputs, attrs, 1, ["Tanh"], _rnn_step)


@ops.op("GRU")
def gru(ctx: KernelContext, inputs: list, attrs: dict):
    """GRU with gates z, r, h; linear_before_reset applies the reset gate after the recurrent matmul."""
    lbr = bool(attrs.get("linear_before_reset", 0))
    if lbr and default_activations(attrs, ["sigmoid", "tanh"]):  # torch's GRU resets after the matmul
        fused = torch_recurrent(inputs, attrs, "gru")
        if fused is not None:
            return fused
    return _recurrent(ctx, inputs, attrs, 3, ["Sigmoid", "Tanh"],
                      lambda c, xw, h, s: _gru_step(c, xw, h, s, lbr))


@ops.op("LSTM")
def lstm(ctx: KernelContext, inputs: list, attrs: dict):
    """LSTM with gates i, o, f, c; optional peepholes P and coupled input-forget gate."""
    coupled = bool(attrs.get("input_forget", 0))
    peepholes = len(inputs) > 7 and inputs[7] is not None
    if not coupled and not peepholes and default_activations(attrs, ["sigmoid", "tanh", "tanh"]):
        fused = torch_recurrent(inputs, attrs, "lstm")
        if fused is not None:
            return fused
    return _recurrent(ctx, inputs, attrs, 4, ["Sigmoid", "Tanh", "Tanh"],
                      lambda c, xw, h, s: _lstm_step(c, xw, h, s, coupled), with_cell=True)
