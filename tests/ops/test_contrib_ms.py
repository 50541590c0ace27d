"""com.microsoft activations, bias adds, FusedMatMul/FusedConv and layer norms against onnxruntime's CPU kernels."""
from __future__ import annotations

import numpy as np
import pytest
from ms_oracle import check_ms, rand

import kiln

X = rand((2, 3, 8))
B8 = rand((8,), 1)


@pytest.mark.parametrize("op,inputs,attrs", [
    ("Gelu", {"x": X}, {}),
    ("BiasGelu", {"x": X, "b": B8}, {}),
    ("FastGelu", {"x": X}, {}),
    ("FastGelu", {"x": X, "b": B8}, {}),
    ("QuickGelu", {"x": X}, {}),
    ("QuickGelu", {"x": X}, {"alpha": 1.1}),
], ids=lambda v: v if isinstance(v, str) else None)
def test_activation_and_bias(op, inputs, attrs):
    check_ms(op, inputs, attrs, lowered=True)


def test_bias_add():
    """onnxruntime has BiasAdd on CUDA only: numpy is the oracle."""
    skip = rand((2, 3, 8), 2)
    check_ms("BiasAdd", {"x": X, "b": B8, "skip": skip}, want=[X + B8 + skip], lowered=True)


@pytest.mark.parametrize("b_shape,axis", [((2, 1, 4, 5), 3), ((1, 3, 4, 5), 3), ((2, 3, 1, 1), 2)])
def test_bias_softmax(b_shape, axis):
    """onnxruntime has BiasSoftmax on CUDA only: numpy is the oracle (softmax over the axes from ``axis``)."""
    x, b = rand((2, 3, 4, 5)), rand(b_shape, 3)
    s = (x + b).reshape(int(np.prod(x.shape[:axis])), -1).astype(np.float64)
    e = np.exp(s - s.max(-1, keepdims=True))
    want = (e / e.sum(-1, keepdims=True)).reshape(x.shape).astype(np.float32)
    check_ms("BiasSoftmax", {"x": x, "b": b}, {"axis": axis, "is_inner_broadcast": 0}, want=[want])


def test_nan_and_inf_propagate():
    x = X.copy()
    x[0, 0, :3] = [np.nan, np.inf, -np.inf]
    for op in ("Gelu", "FastGelu", "QuickGelu"):
        check_ms(op, {"x": x}, {})
    check_ms("BiasGelu", {"x": x, "b": B8}, {})


@pytest.mark.parametrize("attrs,a_shape,b_shape", [
    ({}, (2, 3, 4), (4, 5)),
    ({"alpha": 0.5, "transA": 1}, (2, 4, 3), (4, 5)),
    ({"transB": 1, "alpha": 2.0}, (2, 3, 4), (2, 5, 4)),
    ({"transBatchA": 1}, (3, 2, 4), (2, 4, 5)),
    ({"transBatchB": 1, "transB": 1}, (2, 3, 4), (5, 2, 4)),
])
def test_fused_matmul(attrs, a_shape, b_shape):
    batch_transposed = attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0)
    check_ms("FusedMatMul", {"a": rand(a_shape), "b": rand(b_shape, 1)}, attrs, lowered=not batch_transposed)


@pytest.mark.parametrize("act,params,with_z", [("", [], False), ("Relu", [], True), ("LeakyRelu", [0.2], False),
                                               ("Clip", [-0.5, 0.5], False), ("Sigmoid", [], True),
                                               ("HardSigmoid", [0.3, 0.4], False), ("Tanh", [], False)])
def test_fused_conv(act, params, with_z):
    attrs = {"pads": [1, 1, 1, 1], "strides": [1, 1]}
    if act:
        attrs["activation"] = act
    if params:
        attrs["activation_params"] = params
    inputs = {"x": rand((1, 3, 6, 6)), "w": rand((4, 3, 3, 3), 1), "b": rand((4,), 2),
              "z": rand((1, 4, 6, 6), 3) if with_z else None}
    check_ms("FusedConv", inputs, attrs, const_inputs=("w", "b"), rtol=1e-4, atol=1e-5, lowered=True)


def test_fused_conv_unknown_activation_is_refused_at_parse():
    from ms_oracle import ms_model
    m = ms_model("FusedConv", {"x": rand((1, 3, 6, 6)), "w": rand((4, 3, 3, 3), 1)}, {"activation": "Elu"})
    with pytest.raises(kiln.UnsupportedOpError, match="activation='Elu'"):
        kiln.parse(m)


@pytest.mark.parametrize("beta,bias,sum_out", [(True, True, True), (False, False, False), (True, False, True)])
def test_skip_layer_norm(beta, bias, sum_out):
    inputs = {"x": rand((2, 3, 8)), "skip": rand((2, 3, 8), 1), "gamma": rand((8,), 2), "beta": rand((8,), 3) if beta
              else None, "bias": rand((8,), 4) if bias else None}
    outputs = ["y", "", "", "sum"] if sum_out else ["y"]
    check_ms("SkipLayerNormalization", inputs, {"epsilon": 1e-5}, outputs=outputs, rtol=1e-5, atol=1e-5, lowered=True)


def test_skip_layer_norm_2d_skip():
    inputs = {"x": rand((2, 3, 8)), "skip": rand((3, 8), 1), "gamma": rand((8,), 2), "beta": rand((8,), 3)}
    check_ms("SkipLayerNormalization", inputs, {"epsilon": 1e-5})


@pytest.mark.parametrize("bias", [True, False])
def test_skip_simplified_layer_norm(bias):
    inputs = {"x": rand((2, 3, 8)), "skip": rand((2, 3, 8), 1), "gamma": rand((8,), 2),
              "bias": rand((8,), 4) if bias else None}
    check_ms("SkipSimplifiedLayerNormalization", inputs, {"epsilon": 1e-6}, outputs=["y", "", "", "sum"],
             lowered=True)


def test_simplified_layer_norm():
    """onnxruntime registers it in the ONNX domain; Kiln takes it there and under com.microsoft."""
    from ms_oracle import ms_model, ort_run
    inputs = {"x": rand((2, 3, 8)), "g": rand((8,), 2)}
    m = ms_model("SimplifiedLayerNormalization", inputs, {"epsilon": 1e-6})
    m.graph.node[0].domain = ""
    want = ort_run(m, inputs)
    check_ms("SimplifiedLayerNormalization", inputs, model=m, lowered=True)
    m.graph.node[0].domain = "com.microsoft"
    check_ms("SimplifiedLayerNormalization", inputs, model=m, want=want, lowered=True)


def test_layer_norm_nan_row():
    x = rand((2, 3, 8))
    x[1, 2, 4] = np.nan
    check_ms("SkipLayerNormalization", {"x": x, "skip": rand((2, 3, 8), 1), "gamma": rand((8,), 2),
                                        "beta": rand((8,), 3)}, {"epsilon": 1e-5})


@pytest.mark.parametrize("segment,mask,pos_ids", [(True, True, False), (False, False, False), (True, True, True)])
def test_embed_layer_norm(segment, mask, pos_ids):
    g = np.random.default_rng(0)
    b, s, h = 2, 5, 8
    m = np.ones((b, s), np.int32)
    m[1, 3:] = 0
    inputs = {"ids": g.integers(0, 20, (b, s)).astype(np.int32),
              "seg": g.integers(0, 2, (b, s)).astype(np.int32) if segment else None,
              "word": rand((20, h), 1), "pos": rand((16, h), 2), "segt": rand((2, h), 3) if segment else None,
              "gamma": rand((h,), 4), "beta": rand((h,), 5), "mask": m if mask else None,
              "pos_ids": g.integers(0, 16, (b, s)).astype(np.int32) if pos_ids else None}
    outputs = ["y", "mask_index"] + (["sum"] if pos_ids else [])
    check_ms("EmbedLayerNormalization", inputs, {"epsilon": 1e-5}, outputs=outputs,
             const_inputs=("word", "pos", "segt", "gamma", "beta"))
