"""Attention, RotaryEmbedding, LinearAttention, RNN/GRU/LSTM and the signal ops through Kiln.

The oracle is onnx.reference where it implements the feature, and onnxruntime where the reference
ignores it (the recurrent ops' sequence_lens, activations, clip and input_forget).
"""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from oracle import check_op as _check_op
from oracle import one_node_model

import kiln

# KILN_TEST_DEVICE=cuda runs the same rows on a GPU.
DEVICE = os.environ.get("KILN_TEST_DEVICE", "cpu")
check_op = functools.partial(_check_op, device=DEVICE)


def rand(shape, dtype="float32", lo=-1.0, hi=1.0, seed=0):
    return np.random.default_rng(seed + len(shape)).uniform(lo, hi, shape).astype(dtype)


def tol(dtype):
    return {"float16": {"rtol": 2e-3, "atol": 2e-3}, "float64": {"rtol": 1e-10, "atol": 1e-12}}.get(
        dtype, {"rtol": 1e-4, "atol": 1e-5})


# ---------------------------------------------------------------------------------------------- Attention
B, HQ, HKV, SQ, SKV, D, DV = 2, 4, 2, 3, 5, 8, 6


def attn_inputs(dtype="float32", three_d=False, mask=None, past=0, nonpad=None, hkv=HKV, sq=SQ):
    if three_d:
        q, k, v = rand((B, sq, HQ * D), dtype), rand((B, SKV, hkv * D), dtype, seed=1), rand((B, SKV, hkv * DV), dtype,
                                                                                          seed=2)
    else:
        q, k, v = rand((B, HQ, sq, D), dtype), rand((B, hkv, SKV, D), dtype, seed=1), rand((B, hkv, SKV, DV), dtype,
                                                                                        seed=2)
    ins = {"Q": q, "K": k, "V": v, "attn_mask": None, "past_key": None, "past_value": None}
    total = SKV + past
    if mask == "float":
        ins["attn_mask"] = rand((sq, total), dtype, -2, 0, seed=3)
    elif mask == "float_short":  # key axis shorter than the keys: the rest is masked out
        ins["attn_mask"] = rand((1, HQ, sq, total - 2), dtype, -2, 0, seed=3)
    elif mask == "bool":
        m = rand((B, 1, sq, total), seed=4) > -0.4
        m[0, 0, 1, :] = False  # one fully masked row: its output is zero
        ins["attn_mask"] = m
    elif mask == "bool3d":
        ins["attn_mask"] = rand((HQ, sq, total), seed=4) > -0.5
    elif mask == "bool1d_short":  # rank-1 key mask, shorter than the keys
        ins["attn_mask"] = np.array([True, False] * (total // 2) + [True] * (total % 2))[:total - 1]
    elif mask == "neginf":
        m = np.zeros((sq, total), dtype)
        m[:, -2:] = -np.inf
        ins["attn_mask"] = m
    if past:
        ins["past_key"] = rand((B, hkv, past, D), dtype, seed=5)
        ins["past_value"] = rand((B, hkv, past, DV), dtype, seed=6)
    if nonpad is not None:
        ins["nonpad_kv_seqlen"] = np.array(nonpad, np.int64)
    return ins


# (name, input options, attrs, outputs, opset)
ATTN_ROWS = [
    ("4d", {}, {}, 1, 23),
    ("4d_mha", {"hkv": HQ}, {}, 1, 23),
    ("4d_mqa", {"hkv": 1}, {}, 1, 23),
    ("3d_gqa", {"three_d": True}, {"q_num_heads": HQ, "kv_num_heads": HKV}, 1, 23),
    ("scale", {}, {"scale": 0.3}, 1, 23),
    ("causal_rect", {}, {"is_causal": 1}, 1, 23),
    ("causal_long_q", {"sq": 7}, {"is_causal": 1}, 1, 24),
    ("float_mask", {"mask": "float"}, {}, 1, 23),
    ("float_mask_short", {"mask": "float_short"}, {}, 1, 24),
    ("bool_mask_dead_row", {"mask": "bool"}, {}, 1, 23),
    ("bool3d_mask_causal", {"mask": "bool3d"}, {"is_causal": 1}, 1, 24),
    ("neginf_mask_softcap", {"mask": "neginf"}, {"softcap": 0.7}, 1, 23),
    ("past_present", {"past": 4}, {}, 3, 23),
    ("past_causal_mask", {"past": 4, "mask": "float"}, {"is_causal": 1}, 3, 24),
    ("3d_past", {"three_d": True, "past": 2}, {"q_num_heads": HQ, "kv_num_heads": HKV, "is_causal": 1}, 3, 24),
    ("qk_mode0", {"mask": "float"}, {}, 4, 23),
    ("qk_mode1_softcap", {"mask": "float"}, {"softcap": 1.5, "qk_matmul_output_mode": 1}, 4, 23),
    ("qk_mode2", {"mask": "bool"}, {"qk_matmul_output_mode": 2, "is_causal": 1}, 4, 24),
    ("qk_mode3_dead_row", {"mask": "bool"}, {"qk_matmul_output_mode": 3}, 4, 24),
    ("softmax_f64", {}, {"softmax_precision": 11}, 1, 23),
    ("nonpad_causal", {"nonpad": [3, 5]}, {"is_causal": 1}, 1, 24),
    ("nonpad_negative_offset", {"nonpad": [2, 4], "sq": 4}, {"is_causal": 1}, 4, 24),
    ("bool1d_short_mask", {"mask": "bool1d_short"}, {}, 1, 24),  # (the reference breaks on rank-1 + causal)
    ("decode_step", {"sq": 1, "past": 6, "mask": "float"}, {"is_causal": 1}, 4, 24),
    ("window_left", {}, {"left_window_size": 1, "is_causal": 1}, 1, 25),
    ("window_rank1_mask", {"mask": "bool1d_short"}, {"left_window_size": 1, "right_window_size": 2}, 1, 25),
    ("window_both", {"mask": "float"}, {"left_window_size": 2, "right_window_size": 1}, 1, 25),
    ("window_past", {"past": 3}, {"left_window_size": 2, "right_window_size": 0}, 3, 25),
    ("window_nonpad", {"nonpad": [4, 5], "mask": "bool3d"}, {"left_window_size": 1, "is_causal": 1}, 1, 25),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("name,opts,attrs,n_out,opset", ATTN_ROWS, ids=[r[0] for r in ATTN_ROWS])
def test_attention(name, opts, attrs, n_out, opset, dtype):
    if dtype == "float64" and opset == 23:
        opset = 24  # keep the row count down: float64 runs the opset-24 schema
    ins = attn_inputs(dtype, **opts)
    # The reference takes sqrt(scale) in float32 (the attribute's type), so float64 agrees only to ~1e-8.
    t = {"rtol": 1e-6, "atol": 1e-8} if dtype == "float64" else tol(dtype)
    check_op("Attention", ins, attrs, n_outputs=n_out, opset=opset, **t)


def test_attention_fp16_softmax_in_float():
    ins = attn_inputs("float16", mask="float")
    check_op("Attention", ins, {"softmax_precision": 1, "qk_matmul_output_mode": 3}, n_outputs=4, opset=24,
             **tol("float16"))


# ------------------------------------------------------------------------------------------ RotaryEmbedding
ROPE_ROWS = [
    ("4d", (2, 3, 5, 8), {}, True, 4),
    ("4d_interleaved", (2, 3, 5, 8), {"interleaved": 1}, True, 4),
    ("partial", (2, 3, 5, 8), {"rotary_embedding_dim": 4}, True, 2),
    ("partial_interleaved", (2, 3, 5, 12), {"rotary_embedding_dim": 6, "interleaved": 1}, True, 3),
    ("3d", (2, 5, 24), {"num_heads": 3}, True, 4),
    ("3d_no_pos", (2, 5, 24), {"num_heads": 3, "interleaved": 1}, False, 4),
    ("4d_no_pos_partial", (2, 3, 5, 8), {"rotary_embedding_dim": 4}, False, 2),
]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name,shape,attrs,with_pos,half", ROPE_ROWS, ids=[r[0] for r in ROPE_ROWS])
def test_rotary_embedding(name, shape, attrs, with_pos, half, dtype):
    x = rand(shape, dtype)
    b, s = shape[0], (shape[2] if len(shape) == 4 else shape[1])
    if with_pos:
        cos, sin = rand((16, half), dtype, seed=1), rand((16, half), dtype, seed=2)
        pos = np.random.default_rng(3).integers(0, 16, (b, s)).astype(np.int64)
        ins = {"X": x, "cos": cos, "sin": sin, "pos": pos}
    else:
        ins = {"X": x, "cos": rand((b, s, half), dtype, seed=1), "sin": rand((b, s, half), dtype, seed=2)}
    check_op("RotaryEmbedding", ins, attrs, opset=23, **tol(dtype))


# ------------------------------------------------------------------------------------------ LinearAttention
LIN_ROWS = [
    ("linear", {"update_rule": "linear"}, 4, 4, None, False, False),
    ("gated_per_key", {"update_rule": "gated"}, 4, 2, "key", False, False),
    ("gated_per_head_past", {"update_rule": "gated"}, 2, 2, "head", False, True),
    ("delta_beta_scalar", {"update_rule": "delta"}, 4, 4, None, "one", False),
    ("gated_delta_gqa_past", {"scale": 0.5}, 4, 2, "head", "head", True),
    ("gated_delta_mqa", {}, 4, 1, "key", "head", False),
]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name,attrs,hq,hkv,decay,beta,past", LIN_ROWS, ids=[r[0] for r in LIN_ROWS])
def test_linear_attention(name, attrs, hq, hkv, decay, beta, past, dtype):
    b, t, dk, dv = 2, 5, 4, 3
    key = rand((b, t, hkv * dk), dtype, seed=1)
    key = (key / np.linalg.norm(key.reshape(b, t, hkv, dk), axis=-1).repeat(dk, -1).reshape(key.shape)).astype(dtype)
    ins = {"query": rand((b, t, hq * dk), dtype), "key": key, "value": rand((b, t, hkv * dv), dtype, seed=2),
           "past_state": rand((b, hkv, dk, dv), dtype, seed=3) if past else None,
           "decay": None if decay is None else rand((b, t, hkv * dk if decay == "key" else hkv), dtype, -0.5, 0, 4),
           "beta": None if not beta else rand((b, t, hkv if beta == "head" else 1), dtype, 0, 1, 5)}
    check_op("LinearAttention", ins, {"q_num_heads": hq, "kv_num_heads": hkv, **attrs}, n_outputs=2, opset=27,
             **tol(dtype))


# ---------------------------------------------------------------------------------------- RNN / GRU / LSTM
def run_ort(model, feed):
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def check_recurrent(op, ins, attrs, n_outputs, rtol=1e-4, atol=1e-5):
    """Kiln against onnxruntime (onnx.reference ignores sequence_lens, activations and clip)."""
    model = one_node_model(op, ins, attrs, n_outputs, opset=22)
    feed = {k: v for k, v in ins.items() if v is not None}
    got = kiln.interpret(kiln.parse(model), feed, device=DEVICE)
    got = {k: (v.cpu().numpy() if hasattr(v, "cpu") else v) for k, v in got.items()}
    if attrs.get("layout", 0):
        # onnxruntime has no batch-major layout: ask it the time-major question and transpose its answer.
        ort_ins = {k: (v.swapaxes(0, 1) if k in ("X", "initial_h", "initial_c") and v is not None else v)
                   for k, v in ins.items()}
        ort_model = one_node_model(op, ort_ins, {**attrs, "layout": 0}, n_outputs, opset=22)
        ort_model.ir_version = 10  # the newest IR this onnxruntime reads
        ref = run_ort(ort_model, {k: v for k, v in ort_ins.items() if v is not None})
        ref = [ref[0].transpose(2, 0, 1, 3)] + [r.swapaxes(0, 1) for r in ref[1:]]
    else:
        model.ir_version = 10
        ref = run_ort(model, feed)
    for i, r in enumerate(ref):
        g = np.asarray(got[f"out{i}"])
        assert g.shape == r.shape and g.dtype == r.dtype, f"{op} output {i}: {g.dtype}{g.shape} vs {r.dtype}{r.shape}"
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=f"{op} output {i}")


GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
T, N, I, H = 5, 3, 4, 6

# (op, direction, layout, options, attrs)
RNN_ROWS = [
    ("RNN", "forward", 0, {}, {}),
    ("RNN", "bidirectional", 0, {"lens": True, "h0": True}, {"activations": ["Relu", "LeakyRelu"],
                                                             "activation_alpha": [0.3]}),
    ("RNN", "reverse", 1, {"lens": True}, {"clip": 0.5}),
    ("GRU", "forward", 0, {"h0": True}, {"linear_before_reset": 1}),
    ("GRU", "bidirectional", 0, {"lens": True, "bias": True}, {}),
    ("GRU", "reverse", 1, {"lens": True, "bias": True, "h0": True}, {"linear_before_reset": 1, "clip": 0.8}),
    ("GRU", "forward", 0, {"bias": True}, {"activations": ["HardSigmoid", "Softsign"],
                                           "activation_alpha": [0.3], "activation_beta": [0.4]}),
    ("LSTM", "forward", 0, {"bias": True, "peep": True, "h0": True, "c0": True}, {}),
    ("LSTM", "bidirectional", 0, {"lens": True, "bias": True, "peep": True}, {}),
    ("LSTM", "reverse", 1, {"lens": True, "h0": True, "c0": True}, {"input_forget": 1}),
    ("LSTM", "bidirectional", 1, {"bias": True}, {"clip": 0.3}),
    ("LSTM", "forward", 0, {"bias": True}, {"activations": ["Sigmoid", "Elu", "Softplus"]}),
]


def recurrent_inputs(op, direction, layout, opts) -> dict:
    """The node's inputs by ONNX name (None where ``opts`` leaves one out): "lens" gives per-sample lengths
    5, 2, 4; "full_lens" every sample the whole sequence."""
    dirs, g = (2 if direction == "bidirectional" else 1), GATES[op]
    state_shape = (N, dirs, H) if layout else (dirs, N, H)
    lens = np.array([5, 2, 4], np.int32) if opts.get("lens") else np.full(N, T, np.int32) \
        if opts.get("full_lens") else None
    ins = {"X": rand((N, T, I) if layout else (T, N, I)), "W": rand((dirs, g * H, I), seed=1),
           "R": rand((dirs, g * H, H), seed=2), "B": rand((dirs, 2 * g * H), seed=3) if opts.get("bias") else None,
           "sequence_lens": lens, "initial_h": rand(state_shape, seed=4) if opts.get("h0") else None}
    if op == "LSTM":
        ins["initial_c"] = rand(state_shape, seed=5) if opts.get("c0") else None
        ins["P"] = rand((dirs, 3 * H), seed=6) if opts.get("peep") else None
    return ins


@pytest.mark.parametrize("op,direction,layout,opts,attrs", RNN_ROWS,
                         ids=[f"{r[0]}-{r[1]}-{i}" for i, r in enumerate(RNN_ROWS)])
def test_recurrent(op, direction, layout, opts, attrs):
    ins = recurrent_inputs(op, direction, layout, opts)
    attrs = {"hidden_size": H, "direction": direction, "layout": layout, **attrs}
    check_recurrent(op, ins, attrs, 3 if op == "LSTM" else 2)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_recurrent_against_reference_float64(op):
    """onnx.reference for the features it does implement, in float64."""
    g = GATES[op]
    ins = {"X": rand((T, N, I), "float64"), "W": rand((2, g * H, I), "float64", seed=1),
           "R": rand((2, g * H, H), "float64", seed=2), "B": rand((2, 2 * g * H), "float64", seed=3)}
    check_op(op, ins, {"hidden_size": H, "direction": "bidirectional"}, n_outputs=2, opset=22, **tol("float64"))


# ------------------------------------------------------------------------------------------------- signal
DFT_ROWS = [
    ("real_axis1", (2, 8, 3, 1), {}, None, 1),
    ("complex_axis2", (2, 5, 6, 2), {}, None, 2),
    ("real_onesided", (2, 7, 3, 1), {"onesided": 1}, None, 1),
    ("complex_onesided", (2, 6, 3, 2), {"onesided": 1}, None, 1),
    ("inverse", (2, 6, 3, 2), {"inverse": 1}, None, 1),
    ("irfft", (2, 5, 3, 2), {"inverse": 1, "onesided": 1}, None, 1),
    ("pad_length", (2, 6, 3, 1), {}, 9, 1),
    ("trunc_length", (2, 6, 3, 2), {}, 4, -3),
    ("onesided_length", (3, 6, 1), {"onesided": 1}, 10, -2),
]


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("name,shape,attrs,length,axis", DFT_ROWS, ids=[r[0] for r in DFT_ROWS])
def test_dft(name, shape, attrs, length, axis, opset):
    x = rand(shape)
    ins = {"x": x, "dft_length": None if length is None else np.array(length, np.int64)}
    if opset >= 20:
        ins["axis"] = np.array(axis, np.int64)
    else:
        attrs = {**attrs, "axis": axis}
    consts = tuple(k for k in ("dft_length", "axis") if ins.get(k) is not None)
    check_op("DFT", ins, attrs, opset=opset, rtol=1e-4, atol=1e-5, const_inputs=consts)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("complex_in", [False, True])
@pytest.mark.parametrize("window,frame_length,onesided", [(True, None, 1), (False, 16, 1), (True, 16, 0)])
def test_stft(window, frame_length, onesided, complex_in, dtype):
    if complex_in and onesided:
        pytest.skip("onesided needs a real signal")
    ins = {"signal": rand((2, 64, 2 if complex_in else 1), dtype), "frame_step": np.array(6, np.int64),
           "window": np.hanning(16).astype(dtype) if window else None,
           "frame_length": None if frame_length is None else np.array(frame_length, np.int64)}
    consts = ("frame_step",) + (("frame_length",) if frame_length else ())
    check_op("STFT", ins, {"onesided": onesided}, opset=17, rtol=1e-4, atol=1e-4, const_inputs=consts)


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("size,periodic,dtype", [(10, 1, 1), (7, 0, 1), (16, 1, 11), (5, 0, 10), (1, 1, 1)])
def test_window(op, size, periodic, dtype):
    check_op(op, {"size": np.array(size, np.int64)}, {"periodic": periodic, "output_datatype": dtype}, opset=17,
             rtol=1e-3 if dtype == 10 else 1e-6, atol=1e-3 if dtype == 10 else 1e-6)


@pytest.mark.parametrize("mel,dft,rate,lo,hi,dtype", [(8, 16, 8192, 0.0, 4096.0, 1), (10, 64, 16000, 20.0, 8000.0, 1),
                                                      (4, 32, 22050, 300.0, 5000.0, 11)])
def test_mel_weight_matrix(mel, dft, rate, lo, hi, dtype):
    ins = {"num_mel_bins": np.array(mel, np.int64), "dft_length": np.array(dft, np.int64),
           "sample_rate": np.array(rate, np.int64), "lower_edge_hertz": np.array(lo, np.float32),
           "upper_edge_hertz": np.array(hi, np.float32)}
    check_op("MelWeightMatrix", ins, {"output_datatype": dtype}, opset=17)


# The forms torch's fused kernels run in one call (kiln/ops/rnn_fused.py): each against onnxruntime, and the
# fused path must be the one taken.
FUSED_ROWS = [
    ("RNN", "forward", 0, {"bias": True}, {}),
    ("RNN", "bidirectional", 1, {"h0": True}, {"activations": ["Relu", "Relu"]}),
    ("GRU", "forward", 0, {"bias": True, "h0": True}, {"linear_before_reset": 1}),
    ("GRU", "bidirectional", 1, {"bias": True, "full_lens": True}, {"linear_before_reset": 1}),
    ("GRU", "reverse", 0, {}, {"linear_before_reset": 1, "activations": ["Sigmoid", "Tanh"]}),
    ("LSTM", "forward", 0, {"bias": True, "h0": True, "c0": True}, {}),
    ("LSTM", "bidirectional", 0, {"bias": True, "full_lens": True}, {}),
    ("LSTM", "bidirectional", 1, {"h0": True, "c0": True}, {}),
    ("LSTM", "reverse", 1, {"bias": True}, {}),
]


@pytest.mark.parametrize("op,direction,layout,opts,attrs", FUSED_ROWS,
                         ids=[f"{r[0]}-{r[1]}-{r[2]}-{i}" for i, r in enumerate(FUSED_ROWS)])
def test_recurrent_fused_forms(op, direction, layout, opts, attrs):
    import torch
    from kiln.ops.rnn_fused import torch_recurrent
    ins = recurrent_inputs(op, direction, layout, opts)
    attrs = {"hidden_size": H, "direction": direction, "layout": layout, **attrs}
    check_recurrent(op, ins, attrs, 3 if op == "LSTM" else 2)
    tensors = [None if v is None else torch.from_numpy(v) for v in ins.values()]
    kind = {"RNN": "rnn_" + attrs.get("activations", ["tanh"])[0].lower(), "GRU": "gru", "LSTM": "lstm"}[op]
    assert torch_recurrent(tensors, attrs, kind) is not None


def test_recurrent_fused_path_declines_what_it_would_compute_otherwise():
    import torch
    from kiln.ops.rnn_fused import torch_recurrent
    x, w, r = (torch.from_numpy(rand(s, seed=i)) for i, s in enumerate([(T, N, I), (1, 4 * H, I), (1, 4 * H, H)]))
    attrs = {"hidden_size": H}
    assert torch_recurrent([x, w, r], attrs, "lstm") is not None
    assert torch_recurrent([x, w, r], {**attrs, "clip": 1.0}, "lstm") is None
    assert torch_recurrent([x, w, r, None, torch.tensor([5, 2, 4], dtype=torch.int32)], attrs, "lstm") is None
    assert torch_recurrent([x.half(), w.half(), r.half()], attrs, "lstm") is None  # no fp16 LSTM on the CPU
    assert torch_recurrent([x, w.double(), r], attrs, "lstm") is None
    assert torch_recurrent([x[:0], w, r], attrs, "lstm") is None


def test_refitted_recurrent_weights_are_not_served_from_the_cache():
    import torch
    from kiln.ops.rnn_fused import torch_recurrent
    x, w, r = (torch.from_numpy(rand(s, seed=i)) for i, s in enumerate([(T, N, I), (1, 3 * H, I), (1, 3 * H, H)]))
    attrs = {"hidden_size": H, "linear_before_reset": 1}
    first = torch_recurrent([x, w, r], attrs, "gru")[0].clone()
    w.mul_(0.5)  # an in-place weight update, as a refit does
    second = torch_recurrent([x, w, r], attrs, "gru")[0]
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("direction,layout,opts", [("forward", 0, {"bias": True, "h0": True, "c0": True}),
                                                   ("forward", 1, {}), ("reverse", 0, {"bias": True}),
                                                   ("reverse", 1, {"h0": True, "c0": True})])
def test_short_lstm_sequences_take_the_step_path(steps, direction, layout, opts, monkeypatch):
    """A streaming model's LSTM runs one or two steps per call: those run as matrix products and gate
    arithmetic (rnn_fused._lstm_steps) instead of oneDNN's RNN primitive; against onnxruntime."""
    import torch
    from kiln.ops import rnn_fused
    ins = recurrent_inputs("LSTM", direction, layout, opts)
    ins["X"] = ins["X"][:, :steps] if layout else ins["X"][:steps]
    attrs = {"hidden_size": H, "direction": direction, "layout": layout}
    check_recurrent("LSTM", ins, attrs, 3)
    taken, real = [], rnn_fused._lstm_steps
    monkeypatch.setattr(rnn_fused, "_lstm_steps", lambda *a: taken.append(1) or real(*a))
    tensors = [None if v is None else torch.from_numpy(v) for v in ins.values()]
    assert rnn_fused.torch_recurrent(tensors, attrs, "lstm") is not None and taken
