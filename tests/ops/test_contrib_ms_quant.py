"""com.microsoft quantized ops against onnxruntime's CPU kernels: QLinear elementwise/concat/pool, QGemm,
DynamicQuantizeMatMul, MatMulIntegerToFloat, MatMulNBits, QAttention, QEmbedLayerNormalization, DynamicQuantizeLSTM."""
from __future__ import annotations

import numpy as np
import pytest
from ms_oracle import check_ms, rand

G = np.random.default_rng(0)


def q8(shape, dtype=np.uint8):
    info = np.iinfo(dtype)
    return G.integers(info.min, info.max + 1, shape).astype(dtype)


def w8(shape):
    """int8 weights of 7 bits ([-64, 63]), what onnxruntime's quantizers write with ``reduce_range``: its kernels
    on x86 CPUs without VNNI multiply uint8 by int8 in pairs that saturate int16 beyond that, so with full-range
    weights the oracle itself is wrong there (an AVX2-only EPYC, 2026-12-07: 23 of 40 random QGemm cases differed
    from exact integer arithmetic, Kiln none). Full-range weights are checked against exact arithmetic below."""
    return G.integers(-64, 64, shape).astype(np.int8)


def f(v):
    return np.array(v, np.float32)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
def test_qlinear_binary(op, dtype):
    zp = dtype(3)
    inputs = {"a": q8((2, 3, 4), dtype), "a_s": f(0.05), "a_zp": np.array(zp), "b": q8((4,), dtype), "b_s": f(0.07),
              "b_zp": np.array(dtype(-2 if dtype == np.int8 else 9)), "c_s": f(0.1), "c_zp": np.array(dtype(5))}
    check_ms(op, inputs, const_inputs=("a_s", "a_zp", "b_s", "b_zp", "c_s", "c_zp"))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_sigmoid(dtype):
    inputs = {"x": q8((2, 3, 4), dtype), "x_s": f(0.08), "x_zp": np.array(dtype(4)), "y_s": f(1 / 256),
              "y_zp": np.array(dtype(0 if dtype == np.uint8 else -128))}
    check_ms("QLinearSigmoid", inputs, const_inputs=("x_s", "x_zp", "y_s", "y_zp"))


def test_qlinear_concat():
    inputs = {"y_s": f(0.1), "y_zp": np.array(np.uint8(7)),
              "a": q8((2, 3, 2)), "a_s": f(0.05), "a_zp": np.array(np.uint8(3)),
              "b": q8((2, 1, 2)), "b_s": f(0.2), "b_zp": np.array(np.uint8(128))}
    check_ms("QLinearConcat", inputs, {"axis": 1}, const_inputs=("y_s", "y_zp", "a_s", "a_zp", "b_s", "b_zp"))


@pytest.mark.parametrize("channels_last", [0, 1])
def test_qlinear_global_average_pool(channels_last):
    inputs = {"x": q8((2, 3, 4, 5)), "x_s": f(0.05), "x_zp": np.array(np.uint8(10)), "y_s": f(0.03),
              "y_zp": np.array(np.uint8(4))}
    check_ms("QLinearGlobalAveragePool", inputs, {"channels_last": channels_last},
             const_inputs=("x_s", "x_zp", "y_s", "y_zp"))


@pytest.mark.parametrize("quantized_out", [False, True])
@pytest.mark.parametrize("per_column,trans_b,bias", [(False, 0, False), (True, 1, True), (False, 1, True)])
def test_qgemm(quantized_out, per_column, trans_b, bias):
    m, k, n = 3, 5, 4
    b = w8((n, k) if trans_b else (k, n))
    inputs = {"a": q8((m, k)), "a_s": f(0.05), "a_zp": np.array(np.uint8(120)), "b": b,
              "b_s": f(G.uniform(0.01, 0.05, n) if per_column else 0.03),
              "b_zp": np.zeros(n, np.int8) if per_column else np.array(np.int8(0)),
              "c": G.integers(-100, 100, n).astype(np.int32) if bias else None,
              "y_s": f(0.2) if quantized_out else None, "y_zp": np.array(np.uint8(100)) if quantized_out else None}
    check_ms("QGemm", inputs, {"transB": trans_b, "alpha": 0.5},
             const_inputs=("a_s", "a_zp", "b", "b_s", "b_zp", "c", "y_s", "y_zp"), rtol=1e-5, atol=1e-5)


def test_qgemm_with_full_range_weights_is_exact_integer_arithmetic():
    """uint8 x full-range int8 (where onnxruntime's non-VNNI kernels saturate, see w8): Kiln's QGemm against the
    exact integer product, scaled and requantized in float64."""
    import kiln
    from ms_oracle import ms_model
    m, k, n = 3, 64, 4
    a, b = q8((m, k)), q8((k, n), np.int8)
    b[:, 0], a[0] = -128, 255  # the extreme products, in pairs that overflow int16
    inputs = {"a": a, "a_s": f(0.05), "a_zp": np.array(np.uint8(120)), "b": b, "b_s": f(0.001),
              "b_zp": np.array(np.int8(0)), "c": None, "y_s": f(0.5), "y_zp": np.array(np.uint8(100))}
    consts = ("a_s", "a_zp", "b", "b_s", "b_zp", "c", "y_s", "y_zp")
    model = ms_model("QGemm", inputs, {"transB": 0, "alpha": 0.5}, 1, consts, None)
    acc = (a.astype(np.int64) - 120) @ b.astype(np.int64)
    y = 0.5 * np.float64(np.float32(0.05)) * np.float64(np.float32(0.001)) * acc
    want = np.clip(np.round(y / 0.5) + 100, 0, 255).astype(np.uint8)
    got = kiln.build(model, device="cpu").create_execution_context().infer({"a": a})
    np.testing.assert_array_equal(next(iter(got.values())), want)


@pytest.mark.parametrize("per_column,zp,bias", [(False, False, False), (True, True, True)])
def test_dynamic_quantize_matmul(per_column, zp, bias):
    k, n = 6, 4
    inputs = {"a": rand((2, 3, k)), "b": w8((k, n)),
              "b_s": f(G.uniform(0.01, 0.05, n) if per_column else 0.03),
              "b_zp": (G.integers(-3, 3, n).astype(np.int8) if per_column else np.array(np.int8(1))) if zp else None,
              "bias": rand((n,), 3) if bias else None}
    check_ms("DynamicQuantizeMatMul", inputs, const_inputs=("b", "b_s", "b_zp", "bias"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b_dtype", [np.int8, np.uint8])
def test_matmul_integer_to_float(b_dtype):
    k, n = 6, 4
    inputs = {"a": q8((2, 3, k)), "b": w8((k, n)) if b_dtype == np.int8 else q8((k, n), b_dtype), "a_s": f(0.04), "b_s": f(G.uniform(0.01, 0.05, n)),
              "a_zp": np.array(np.uint8(128)), "b_zp": np.full(n, 2, b_dtype), "bias": rand((n,), 3)}
    check_ms("MatMulIntegerToFloat", inputs, const_inputs=("b", "a_s", "b_s", "a_zp", "b_zp", "bias"),
             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("zero_points", ["none", "packed", "float"])
@pytest.mark.parametrize("k", [32, 40])
def test_matmul_nbits(bits, zero_points, k):
    n, block = 5, 16
    blocks = (k + block - 1) // block
    blob = block * bits // 8
    inputs = {"a": rand((2, 3, k)), "b": q8((n, blocks, blob)), "scales": f(G.uniform(0.01, 0.1, (n * blocks,)))}
    if zero_points == "packed":
        inputs["zp"] = q8((n, (blocks * bits + 7) // 8))
    elif zero_points == "float":
        if bits != 4:
            pytest.skip("onnxruntime takes float zero points with 4 bits only")
        inputs["zp"] = f(G.uniform(0, 15, (n * blocks,)))
    else:
        inputs["zp"] = None
    inputs["g_idx"] = None
    inputs["bias"] = rand((n,), 4)
    check_ms("MatMulNBits", inputs, {"K": k, "N": n, "bits": bits, "block_size": block},
             const_inputs=("b", "scales", "zp", "bias"), rtol=1e-4, atol=1e-4)


def test_qattention():
    b, s, n, h = 2, 4, 2, 4
    d = n * h
    mask = np.array([4, 2], np.int32)
    inputs = {"x": q8((b, s, d)), "w": w8((d, 3 * d)), "bias": rand((3 * d,), 1), "x_s": f(0.02),
              "w_s": f(0.01), "mask": mask, "x_zp": np.array(np.uint8(128)), "w_zp": np.array(np.int8(0))}
    check_ms("QAttention", inputs, {"num_heads": n}, const_inputs=("w", "bias", "x_s", "w_s", "x_zp", "w_zp"),
             rtol=1e-4, atol=1e-4)


def test_qembed_layer_norm():
    b, s, h = 2, 5, 8
    m = np.ones((b, s), np.int32)
    m[1, 3:] = 0
    names = ["word", "pos", "segt", "gamma", "beta"]
    shapes = [(20, h), (16, h), (2, h), (h,), (h,)]
    inputs = {"ids": G.integers(0, 20, (b, s)).astype(np.int32), "seg": G.integers(0, 2, (b, s)).astype(np.int32)}
    inputs.update({nm: q8(sh) for nm, sh in zip(names, shapes)})
    inputs["mask"] = m
    inputs.update({f"{nm}_s": f(0.01 * (i + 1)) for i, nm in enumerate(names)})
    inputs.update({f"{nm}_zp": np.array(np.uint8(100 + i)) for i, nm in enumerate(names)})
    consts = tuple(k for k in inputs if k not in ("ids", "seg", "mask"))
    check_ms("QEmbedLayerNormalization", inputs, {"epsilon": 1e-5}, const_inputs=consts, outputs=["y", "mask_index"],
             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("direction,states,peepholes", [("forward", False, False), ("reverse", True, False),
                                                      ("bidirectional", True, True)])
def test_dynamic_quantize_lstm(direction, states, peepholes):
    seq, b, i, hid = 3, 2, 4, 5
    dirs = 2 if direction == "bidirectional" else 1
    w, r = w8((dirs, i, 4 * hid)), w8((dirs, hid, 4 * hid))
    inputs = {"x": rand((seq, b, i)), "w": w, "r": r, "b": rand((dirs, 8 * hid), 1, -0.1, 0.1), "lens": None,
              "h0": rand((dirs, b, hid), 2) if states else None, "c0": rand((dirs, b, hid), 3) if states else None,
              "p": rand((dirs, 3 * hid), 4) if peepholes else None,
              "w_s": f(G.uniform(0.005, 0.02, (dirs, 4 * hid))), "w_zp": np.zeros((dirs, 4 * hid), np.int8),
              "r_s": f(G.uniform(0.005, 0.02, (dirs, 4 * hid))), "r_zp": np.zeros((dirs, 4 * hid), np.int8)}
    check_ms("DynamicQuantizeLSTM", inputs, {"hidden_size": hid, "direction": direction}, outputs=["y", "y_h", "y_c"],
             const_inputs=("w", "r", "b", "p", "w_s", "w_zp", "r_s", "r_zp"), rtol=1e-5, atol=1e-5)
