"""ONNX RNN/GRU/LSTM as one call of torch's fused recurrent kernels (oneDNN on the CPU).

A Python loop over time steps costs a few kernel launches and ~20 µs of dispatch per step; torch's
``torch.lstm``/``torch.gru``/``torch.rnn_tanh`` run the whole sequence, both directions, in one call.
They compute exactly ONNX's equations when the node uses torch's activations, no clip, no peepholes, no
coupled input-forget gate, GRU's reset after the matmul (linear_before_reset=1, what PyTorch exports) and
every sample runs the whole sequence. ``torch_recurrent`` returns None for every other node and rnn.py's
loop, the general definition, runs it.

Only the gate order differs: ONNX stores LSTM gates as i,o,f,c and GRU gates as z,r,h; torch expects
i,f,c,o and r,z,h. The reordered weights are made once per weight tensor and kept while it lives.
"""
from __future__ import annotations

import weakref

import torch

# ONNX gate blocks -> torch's order.
GATE_ORDER = {"lstm": (0, 2, 3, 1), "gru": (1, 0, 2), "rnn_tanh": (0,), "rnn_relu": (0,)}
KERNELS = {"lstm": torch.lstm, "gru": torch.gru, "rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu}
# dtypes torch's fused kernels take, per device (others run rnn.py's loop). CUDA is not listed yet: cuDNN's
# RNN wants its weights in one flat buffer (else it copies them every call) and its behaviour under CUDA graph
# capture has not been checked on the GPU machine; the loop there is tested (tests/gpu/test_reliability_gpu.py).
DTYPES = {"cpu": (torch.float32, torch.float64, torch.bfloat16)}

# id(W) -> (a weak reference to W, its version, R, B, versions of R and B, torch's parameter list). A cache,
# not a registry: an entry is dropped when its W dies, and an in-place weight update (refit) changes the
# version. Keyed by id, not by the tensor: a tensor's == is elementwise, which dict lookups cannot use.
_PARAMS: dict[int, tuple] = {}


def default_activations(attrs: dict, defaults: list[str]) -> bool:
    names = [a.lower() for a in attrs.get("activations") or []]
    return not names or names == defaults or names == defaults * 2


def _version(t: torch.Tensor | None) -> int:
    try:
        return -1 if t is None else t._version
    except RuntimeError:  # an inference tensor keeps no version counter: it cannot be refitted in place
        return -1


def _reorder(t: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    blocks = t.chunk(len(order), dim=0)
    return torch.cat([blocks[i] for i in order], dim=0).contiguous()


def _params(kind: str, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None) -> list[torch.Tensor]:
    versions = (_version(w), _version(r), _version(b))
    hit = _PARAMS.get(id(w))
    if hit is not None and hit[0]() is w and hit[1] is r and hit[2] is b and hit[3] == versions:
        return hit[4]
    order = GATE_ORDER[kind]
    params = []
    for d in range(w.shape[0]):
        params += [_reorder(w[d], order), _reorder(r[d], order)]
        if b is not None:
            wb, rb = b[d].chunk(2)
            params += [_reorder(wb, order), _reorder(rb, order)]
    key = id(w)
    _PARAMS[key] = (weakref.ref(w, lambda _, key=key: _PARAMS.pop(key, None)), r, b, versions, params)
    return params


# A sequence this short (a streaming model's one frame per call) runs as matrix products and gate arithmetic:
# torch's CPU LSTM hands every call to oneDNN, which builds its RNN primitive each time (2-core VM: 150-210 us
# warm and ~530 us inside silero-vad's run for one step of a 128-unit LSTM, against 70-85 us for this path).
SHORT_SEQUENCE = 2


def _lstm_steps(x, h, c, params: list, has_bias: bool):
    """torch's one-direction LSTM equations (gates i, f, g, o) step by step: (y, h_T, c_T) as torch.lstm."""
    w_ih, w_hh = params[0], params[1]
    bias = params[2] + params[3] if has_bias else None
    seq_len, batch = x.shape[0], x.shape[1]
    rows = x.reshape(seq_len * batch, x.shape[2])
    gates_x = (rows @ w_ih.t() if bias is None else torch.addmm(bias, rows, w_ih.t())).view(seq_len, batch, -1)
    h, c, ys = h[0], c[0], []
    for t in range(seq_len):
        i, f, g, o = torch.addmm(gates_x[t], h, w_hh.t()).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys), h.unsqueeze(0), c.unsqueeze(0)


def _whole_sequences(lens: torch.Tensor | None, seq_len: int) -> bool:
    """No sequence_lens, or a host tensor in which every sample runs the whole sequence (reading a device
    tensor would synchronize, and break CUDA graph capture)."""
    if lens is None:
        return True
    return lens.device.type == "cpu" and bool((lens == seq_len).all())


def torch_recurrent(inputs: list, attrs: dict, kind: str):
    """ONNX RNN/GRU/LSTM outputs from one torch call, or None where torch's kernel would compute otherwise.
    The caller has checked the activations and the op-specific attributes (linear_before_reset,
    input_forget, peepholes)."""
    x, w, r = inputs[:3]
    b, lens, h0 = (list(inputs[3:6]) + [None] * 3)[:3]
    c0 = inputs[6] if kind == "lstm" and len(inputs) > 6 else None
    layout = int(attrs.get("layout", 0))
    seq_len = x.shape[layout]
    if attrs.get("clip") is not None or seq_len == 0 or x.dtype not in DTYPES.get(x.device.type, ()) \
            or any(t is not None and t.dtype != x.dtype for t in (w, r, b, h0, c0)) \
            or not _whole_sequences(lens, seq_len):
        return None
    num_dirs, hidden = w.shape[0], r.shape[-1]
    if layout == 1:  # batch-major: X (B, T, I), states (B, D, H)
        x = x.transpose(0, 1)
        h0 = None if h0 is None else h0.transpose(0, 1)
        c0 = None if c0 is None else c0.transpose(0, 1)
    reverse = attrs.get("direction", "forward") == "reverse"  # torch has no reverse-only RNN: flip time
    if reverse:
        x = x.flip(0)
    batch = x.shape[1]
    zeros = None
    if h0 is None or (kind == "lstm" and c0 is None):
        zeros = x.new_zeros(num_dirs, batch, hidden)
    h0 = (zeros if h0 is None else h0).contiguous()
    params = _params(kind, w, r, b)
    args = (params, b is not None, 1, 0.0, False, num_dirs == 2, False)
    if kind == "lstm" and num_dirs == 1 and seq_len <= SHORT_SEQUENCE:
        y, y_h, y_c = _lstm_steps(x, h0, zeros if c0 is None else c0, params, b is not None)
    elif kind == "lstm":
        c0 = (zeros if c0 is None else c0).contiguous()
        y, y_h, y_c = KERNELS[kind](x.contiguous(), (h0, c0), *args)
    else:
        y, y_h = KERNELS[kind](x.contiguous(), h0, *args)
        y_c = None
    y = y.view(seq_len, batch, num_dirs, hidden)  # torch: (T, B, D*H), directions side by side
    if reverse:
        y = y.flip(0)
    if layout == 1:
        y, y_h = y.transpose(0, 1), y_h.transpose(0, 1)  # (B, T, D, H), (B, D, H)
        y_c = None if y_c is None else y_c.transpose(0, 1)
    else:
        y = y.transpose(1, 2)  # (T, D, B, H)
    return (y, y_h, y_c) if kind == "lstm" else (y, y_h)
