"""com.microsoft Attention, MultiHeadAttention and RotaryEmbedding against onnxruntime's CPU kernels:
mask forms, causal, past/present KV, attention bias, packed layouts."""
from __future__ import annotations

import numpy as np
import pytest
from ms_oracle import check_ms, rand

import kiln

B, S, N, H = 2, 4, 2, 4
D = N * H


def _lengths():
    return np.array([4, 2], np.int32)


def _raw_mask(t=S):
    m = np.ones((B, t), np.int32)
    m[1, t // 2:] = 0
    return m


@pytest.mark.parametrize("mask", ["none", "lengths", "end_start", "raw", "raw3d", "dummy"])
@pytest.mark.parametrize("causal", [0, 1])
def test_attention_masks(mask, causal):
    masks = {"none": None, "lengths": _lengths(), "end_start": np.array([4, 3, 0, 1], np.int32),
             "raw": _raw_mask(), "raw3d": np.tril(np.ones((B, S, S), np.int32)), "dummy": np.ones((B, 1), np.int32)}
    inputs = {"x": rand((B, S, D)), "w": rand((D, 3 * D), 1, -0.5, 0.5), "b": rand((3 * D,), 2), "mask": masks[mask]}
    check_ms("Attention", inputs, {"num_heads": N, "unidirectional": causal}, const_inputs=("w", "b"), lowered=True)


def test_attention_all_masked_row_is_uniform_not_nan():
    m = np.ones((B, S), np.int32)
    m[1] = 0
    inputs = {"x": rand((B, S, D)), "w": rand((D, 3 * D), 1, -0.5, 0.5), "b": rand((3 * D,), 2), "mask": m}
    check_ms("Attention", inputs, {"num_heads": N}, const_inputs=("w", "b"))


@pytest.mark.parametrize("causal", [0, 1])
def test_attention_past_present(causal):
    p = 3
    inputs = {"x": rand((B, S, D)), "w": rand((D, 3 * D), 1, -0.5, 0.5), "b": rand((3 * D,), 2),
              "mask": _raw_mask(p + S), "past": rand((2, B, N, p, H), 3)}
    check_ms("Attention", inputs, {"num_heads": N, "unidirectional": causal}, const_inputs=("w", "b"),
             outputs=["y", "present"], lowered=False)


def test_attention_bias_input():
    inputs = {"x": rand((B, S, D)), "w": rand((D, 3 * D), 1, -0.5, 0.5), "b": rand((3 * D,), 2),
              "mask": _lengths(), "past": None, "attn_bias": rand((1, N, S, S), 4)}
    check_ms("Attention", inputs, {"num_heads": N}, const_inputs=("w", "b"))


def test_attention_qkv_hidden_sizes_and_scale():
    inputs = {"x": rand((B, S, D)), "w": rand((D, 2 * D + 2 * N), 1, -0.5, 0.5), "b": rand((2 * D + 2 * N,), 2)}
    check_ms("Attention", inputs, {"num_heads": N, "qkv_hidden_sizes": [D, D, 2 * N], "scale": 0.3},
             const_inputs=("w", "b"))


def test_attention_nan_propagates():
    x = rand((B, S, D))
    x[0, 1, 2] = np.nan
    inputs = {"x": x, "w": rand((D, 3 * D), 1, -0.5, 0.5), "b": rand((3 * D,), 2)}
    check_ms("Attention", inputs, {"num_heads": N}, const_inputs=("w", "b"))


def test_attention_do_rotary_is_refused_at_parse():
    from ms_oracle import ms_model
    m = ms_model("Attention", {"x": rand((B, S, D)), "w": rand((D, 3 * D))}, {"num_heads": N, "do_rotary": 1})
    with pytest.raises(kiln.UnsupportedOpError, match="do_rotary=1"):
        kiln.parse(m)


@pytest.mark.parametrize("mask", ["none", "lengths", "raw", "raw3d"])
@pytest.mark.parametrize("bias", [False, True])
def test_mha_separate_qkv(mask, bias):
    l = 5
    masks = {"none": None, "lengths": np.array([5, 3], np.int32), "raw": _raw_mask(l),
             "raw3d": np.ones((B, S, l), np.int32)}
    inputs = {"q": rand((B, S, D)), "k": rand((B, l, D), 1), "v": rand((B, l, D), 2),
              "bias": rand((3 * D,), 3) if bias else None, "mask": masks[mask]}
    check_ms("MultiHeadAttention", inputs, {"num_heads": N}, rtol=1e-5, atol=1e-5, const_inputs=("bias",),
             lowered=True)


def test_mha_past_present_causal():
    p = 3
    inputs = {"q": rand((B, S, D)), "k": rand((B, S, D), 1), "v": rand((B, S, D), 2), "bias": None,
              "mask": None, "attn_bias": rand((B, N, S, p + S), 5),
              "past_k": rand((B, N, p, H), 3), "past_v": rand((B, N, p, H), 4)}
    check_ms("MultiHeadAttention", inputs, {"num_heads": N, "unidirectional": 1, "scale": 0.25},
             outputs=["y", "pk", "pv"], lowered=True)


def test_mha_bnsh_keys():
    l = 3
    check_ms("MultiHeadAttention", {"q": rand((B, S, D)), "k": rand((B, N, l, H), 1), "v": rand((B, N, l, H), 2)},
             {"num_heads": N})


def test_mha_packed_kv_and_qkv():
    """onnxruntime runs packed layouts on CUDA only: the oracle is its CPU result on the same tensors unpacked."""
    from ms_oracle import ms_model, ort_run
    l = 3
    q, k, v = rand((B, S, D)), rand((B, l, N, H), 1), rand((B, l, N, H), 2)
    unpacked = {"q": q, "k": k.reshape(B, l, D), "v": v.reshape(B, l, D)}
    want = ort_run(ms_model("MultiHeadAttention", unpacked, {"num_heads": N}), unpacked)
    check_ms("MultiHeadAttention", {"q": q, "kv": np.stack([k, v], axis=3)}, {"num_heads": N}, want=want)
    k, v = rand((B, S, N, H), 1), rand((B, S, N, H), 2)
    unpacked = {"q": q, "k": k.reshape(B, S, D), "v": v.reshape(B, S, D)}
    want = ort_run(ms_model("MultiHeadAttention", unpacked, {"num_heads": N}), unpacked)
    check_ms("MultiHeadAttention", {"qkv": np.stack([q.reshape(B, S, N, H), k, v], axis=3)}, {"num_heads": N},
             want=want)


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("layout", ["bsd", "bnsh"])
@pytest.mark.parametrize("pos", ["offset", "ids"])
def test_rotary_embedding(interleaved, layout, pos):
    x = rand((B, S, D)) if layout == "bsd" else rand((B, N, S, H))
    ids = np.array([2], np.int64) if pos == "offset" else np.random.default_rng(0).integers(0, 8, (B, S))
    cos, sin = rand((8, H // 2), 1, -1, 1), rand((8, H // 2), 2, -1, 1)
    attrs = {"interleaved": interleaved}
    if layout == "bsd":
        attrs["num_heads"] = N
    check_ms("RotaryEmbedding", {"x": x, "pos": ids.astype(np.int64), "cos": cos, "sin": sin}, attrs)


def test_rotary_embedding_partial():
    cos, sin = rand((8, 1), 1, -1, 1), rand((8, 1), 2, -1, 1)
    check_ms("RotaryEmbedding", {"x": rand((B, S, D)), "pos": np.array([0], np.int64), "cos": cos, "sin": sin},
             {"num_heads": N, "rotary_embedding_dim": 2})


def test_ops_left_on_their_kernels_say_why_in_the_report():
    p = 3
    inputs = {"x": rand((B, S, D)), "w": rand((D, 3 * D), 1, -0.5, 0.5), "b": rand((3 * D,), 2), "mask": None,
              "past": rand((2, B, N, p, H), 3)}
    engine = check_ms("Attention", inputs, {"num_heads": N}, const_inputs=("w", "b"), outputs=["y", "present"],
                      lowered=False)
    reasons = [r["reason"] for r in engine.report.rejections if r["rule"] == "lower_contrib_ms"]
    assert any("past / present" in r for r in reasons), engine.report.rejections


def test_four_d_mask_is_a_kiln_error():
    from ms_oracle import ms_model
    inputs = {"x": rand((B, S, D)), "w": rand((D, 3 * D), 1), "b": rand((3 * D,), 2),
              "mask": np.ones((B, 1, S, S), np.int32)}
    m = ms_model("Attention", inputs, {"num_heads": N}, const_inputs=("w", "b"))
    with pytest.raises(kiln.KilnError, match=r"mask of shape \(2, 1, 4, 4\) is not supported"):
        kiln.interpret(kiln.parse(m), {"x": inputs["x"], "mask": inputs["mask"]})


@pytest.mark.parametrize("mask,lowered", [("raw", True), ("lengths", False)])
def test_mha_past_with_key_padding_mask(mask, lowered):
    """A (B, P+L) mask lowers with the cache; a (B) length mask is left to the kernel (its key length is P+L)."""
    p = 3
    masks = {"raw": _raw_mask(p + S), "lengths": np.array([7, 5], np.int32)}
    inputs = {"q": rand((B, S, D)), "k": rand((B, S, D), 1), "v": rand((B, S, D), 2), "bias": None,
              "mask": masks[mask], "attn_bias": None, "past_k": rand((B, N, p, H), 3), "past_v": rand((B, N, p, H), 4)}
    check_ms("MultiHeadAttention", inputs, {"num_heads": N}, outputs=["y", "pk", "pv"], lowered=lowered)
