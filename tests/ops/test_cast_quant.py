"""Cast / BitCast / quantization ops through Kiln against onnx.reference, beyond the ONNX node suite:
more type pairs (both directions of every narrow type), opset versions, saturate / round_mode,
per-axis and blocked quantization with remainders, precision, and integer / quantized matmul and conv."""
from __future__ import annotations

import os

import ml_dtypes as mld
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as TP
from oracle import one_node_model, run_both

import kiln
from kiln.ir.dtype import DType
from kiln.ops.cast_formats import convert

DEVICE = os.environ.get("KILN_TEST_DEVICE", "cpu")
rng = np.random.default_rng(11)
EXACT = {"rtol": 0.0, "atol": 0.0}


def uni(shape, lo=-4.0, hi=4.0, dtype=np.float32):
    return rng.uniform(lo, hi, shape).astype(dtype)


def ints(shape, lo, hi, dtype):
    return rng.integers(lo, hi, shape, endpoint=True).astype(dtype)


def wide_floats(n=600, dtype=np.float32):
    """Magnitudes across many binades plus the edge values the narrow formats care about."""
    x = rng.standard_normal(n) * np.exp2(rng.integers(-20, 20, n))
    edges = [0.0, -0.0, np.inf, -np.inf, np.nan, 448, 464, 480, 240, 57344, 61440, 65504, 65520, 6, 7, 0.25,
             0.75, 5, 2.0**-9, 2.0**-10, 1e-7, -1e-7, 1e6, -1e6]
    with np.errstate(over="ignore"):
        return np.concatenate([x, edges]).astype(np.float32).astype(dtype)


def run(op, inputs, attrs=None, opset=21, tol=EXACT, n_outputs=1):
    """Kiln against onnx.reference on a one-node model.

    Output types are declared (by ONNX shape inference), as in real models: from storage alone int4
    cannot be told from int8, nor float4e2m1 from float.
    """
    model = onnx.shape_inference.infer_shapes(one_node_model(op, inputs, attrs or {}, n_outputs, opset))
    ref, got = run_both(model, inputs, DEVICE)
    for i, (r, g) in enumerate(zip(ref, got)):
        r, g = np.asarray(r), np.asarray(g)
        what = f"{op} output {i}"
        assert (r.dtype, r.shape) == (g.dtype, g.shape), f"{what}: {g.dtype}{g.shape}, expected {r.dtype}{r.shape}"
        np.testing.assert_allclose(g.astype(np.float64), r.astype(np.float64), equal_nan=True, err_msg=what, **tol)


# ---------------------------------------------------------------- Cast
NARROW_FLOATS = [TP.FLOAT8E4M3FN, TP.FLOAT8E4M3FNUZ, TP.FLOAT8E5M2, TP.FLOAT8E5M2FNUZ]

# (input, to, attrs, opset)
CAST_ROWS = [
    *[(wide_floats(), to, {}, 21) for to in NARROW_FLOATS + [TP.FLOAT16, TP.BFLOAT16, TP.DOUBLE, TP.FLOAT4E2M1]],
    *[(wide_floats(), to, {"saturate": 0}, 19) for to in NARROW_FLOATS],
    *[(wide_floats().astype(np.float64), to, {}, 21) for to in NARROW_FLOATS + [TP.FLOAT16, TP.FLOAT4E2M1]],
    *[(wide_floats(dtype=np.float16), to, {"saturate": s}, 21) for to in NARROW_FLOATS for s in (0, 1)],
    (wide_floats().astype(mld.bfloat16), TP.FLOAT8E4M3FN, {}, 21),
    (wide_floats(), TP.FLOAT16, {}, 6),
    (wide_floats(), TP.BOOL, {}, 13),
    # float -> integer truncates toward zero; in-range values only (out of range is undefined)
    *[(uni((5, 7), -100, 100), to, {}, 21) for to in (TP.INT8, TP.INT16, TP.INT32, TP.INT64)],
    *[(uni((5, 7), 0, 250), to, {}, 21) for to in (TP.UINT8, TP.UINT16, TP.UINT32, TP.UINT64)],
    *[(uni((5, 7), lo - 0.99, hi + 0.99), to, {}, 21)
      for to, (lo, hi) in {TP.INT4: (-8, 7), TP.UINT4: (0, 15), TP.INT2: (-2, 1), TP.UINT2: (0, 3)}.items()],
    *[(ints((6, 5), -300, 300, np.int32), to, {}, 21)
      for to in (TP.INT4, TP.UINT4, TP.INT2, TP.UINT2, TP.INT8, TP.UINT8, TP.FLOAT8E4M3FN, TP.FLOAT4E2M1, TP.BOOL)],
    (ints((6, 5), -2**40, 2**40, np.int64), TP.INT16, {}, 21),
    (ints((6, 5), 0, 255, np.uint8), TP.INT8, {}, 21),
    (ints((6, 5), 0, 65535, np.uint16), TP.FLOAT, {}, 21),
    (ints((6, 5), -8, 7, mld.int4), TP.FLOAT, {}, 21),
    (ints((6, 5), 0, 15, mld.uint4), TP.INT32, {}, 21),
    (ints((7,), -2, 1, mld.int2), TP.FLOAT16, {}, 25),
    (uni((4, 5), -7, 7).astype(mld.float4_e2m1fn), TP.FLOAT, {}, 21),
    (uni((4, 5), -7, 7).astype(mld.float4_e2m1fn), TP.FLOAT8E5M2, {}, 21),
    (uni((4, 5), -7, 7).astype(mld.float4_e2m1fn), TP.INT8, {}, 21),
    (wide_floats().astype(mld.float8_e4m3fn), TP.FLOAT16, {}, 21),
    (wide_floats().astype(mld.float8_e5m2), TP.FLOAT8E4M3FN, {"saturate": 0}, 21),
    (wide_floats().astype(mld.float8_e4m3fnuz), TP.BFLOAT16, {}, 21),
    (wide_floats().astype(mld.float8_e5m2fnuz), TP.DOUBLE, {}, 21),
    (uni((4, 5), -100, 100).astype(mld.float8_e4m3fn), TP.INT32, {}, 21),
    (np.array([True, False, True]), TP.FLOAT8E4M3FN, {}, 21),
    (np.array([True, False, True]), TP.INT4, {}, 21),
    # float8e8m0 in every rounding mode, saturated or not
    *[(np.abs(wide_floats()), TP.FLOAT8E8M0, {"saturate": s, "round_mode": m}, 25)
      for s in (0, 1) for m in ("up", "down", "nearest")],
    (np.abs(wide_floats(dtype=np.float16)), TP.FLOAT8E8M0, {"round_mode": "nearest"}, 25),
    (np.exp2(rng.integers(-127, 128, 40)).astype(np.float32), TP.FLOAT8E8M0, {}, 24),
    (np.exp2(rng.integers(-127, 128, 40)).astype(mld.float8_e8m0fnu), TP.FLOAT, {}, 25),
    (np.exp2(rng.integers(-20, 20, 40)).astype(mld.float8_e8m0fnu), TP.BFLOAT16, {}, 25),
]


@pytest.mark.parametrize("x,to,attrs,opset", CAST_ROWS,
                         ids=[f"{r[0].dtype}-{TP.DataType.Name(r[1])}-{i}" for i, r in enumerate(CAST_ROWS)])
def test_cast(x, to, attrs, opset):
    run("Cast", {"x": x}, {"to": to, **attrs}, opset)


# Float -> sub-byte integer outside the range is undefined in the ONNX text; the node suite fixes 0 (Kiln's
# rule, written in cast_formats.float_to_subbyte). Expected values by hand, so no ml_dtypes release can move them.
FLOAT_TO_SUBBYTE = np.array([2.7, -2.7, 7.9, 8.0, -8.0, -8.5, -9.0, 15.0, 16.0, -1.0, np.nan, np.inf, -np.inf, 1e10],
                            np.float32)
FLOAT_TO_SUBBYTE_ROWS = [
    (TP.INT4, mld.int4, [2, -2, 7, 0, -8, -8, 0, 0, 0, -1, 0, 0, 0, 0]),
    (TP.UINT4, mld.uint4, [2, 0, 7, 8, 0, 0, 0, 15, 0, 0, 0, 0, 0, 0]),
    (TP.INT2, mld.int2, [0, -2, 0, 0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0]),
    (TP.UINT2, mld.uint2, [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
]


@pytest.mark.parametrize("to,np_type,expected", FLOAT_TO_SUBBYTE_ROWS, ids=[r[1].__name__ for r in FLOAT_TO_SUBBYTE_ROWS])
@pytest.mark.parametrize("src", [np.float32, np.float16, np.float64])
def test_cast_float_to_subbyte_out_of_range_gives_zero(to, np_type, expected, src):
    with np.errstate(over="ignore"):  # 1e10 becomes inf in float16, which must give 0 as well
        x = FLOAT_TO_SUBBYTE.astype(src)
    model = onnx.shape_inference.infer_shapes(one_node_model("Cast", {"x": x}, {"to": to}, 1, 21))
    got = kiln.interpret(kiln.parse(model), {"x": x}, device=DEVICE)
    (out,) = got.values()
    out = np.asarray(out.cpu() if isinstance(out, torch.Tensor) else out)
    assert out.dtype == np_type
    assert out.astype(np.int16).tolist() == expected


# onnx.reference (ml_dtypes) cannot cast between sub-byte integer types: expected values by hand.
SUBBYTE_INT_ROWS = [
    (ints((9,), -8, 7, mld.int4), TP.UINT4, mld.uint4, lambda v: v & 15),
    (ints((9,), 0, 15, mld.uint4), TP.INT4, mld.int4, lambda v: ((v + 8) & 15) - 8),
    (ints((9,), 0, 3, mld.uint2), TP.INT2, mld.int2, lambda v: ((v + 2) & 3) - 2),
    (ints((9,), -2, 1, mld.int2), TP.UINT4, mld.uint4, lambda v: v & 15),
    (ints((9,), -8, 7, mld.int4), TP.INT2, mld.int2, lambda v: ((v + 2) & 3) - 2),
]


@pytest.mark.parametrize("x,to,np_type,expected", SUBBYTE_INT_ROWS, ids=[f"{r[0].dtype}-{r[2].__name__}"
                                                                        for r in SUBBYTE_INT_ROWS])
def test_cast_between_subbyte_ints(x, to, np_type, expected):
    model = onnx.shape_inference.infer_shapes(one_node_model("Cast", {"x": x}, {"to": to}, opset=21))
    got = kiln.interpret(kiln.parse(model), {"x": x}, device=DEVICE)["out0"]
    if isinstance(got, torch.Tensor):  # off CPU Kiln hands back its storage (int8 / uint8)
        got = got.cpu().numpy()
    else:
        assert got.dtype == np_type
    np.testing.assert_array_equal(got.astype(np.int64), expected(x.astype(np.int64)))


CASTLIKE_ROWS = [
    (wide_floats(), np.zeros(1, np.float16), {}),
    (wide_floats(), np.zeros(1, mld.float8_e5m2), {"saturate": 0}),
    (wide_floats(), np.zeros(1, mld.float8_e4m3fnuz), {}),
    (uni((3, 4), -20, 20), np.zeros(1, mld.int4), {}),
    (uni((3, 4), -20, 20), np.zeros(1, mld.uint2), {}),
    (uni((3, 4), -7, 7), np.zeros(1, mld.float4_e2m1fn), {}),
    (ints((3, 4), -8, 7, mld.int4), np.zeros(1, np.float32), {}),
]


@pytest.mark.parametrize("x,like,attrs", CASTLIKE_ROWS, ids=[f"{r[1].dtype}-{i}" for i, r in enumerate(CASTLIKE_ROWS)])
def test_cast_like(x, like, attrs):
    run("CastLike", {"x": x, "like": like}, attrs, 21)


# ---------------------------------------------------------------- BitCast
BITCAST_ROWS = [
    (uni((3, 4)), TP.INT32), (uni((3, 4)), TP.UINT32), (ints((3, 4), -2**31, 2**31 - 1, np.int32), TP.FLOAT),
    (uni((5,), dtype=np.float64), TP.INT64), (uni((5,), dtype=np.float64), TP.UINT64),
    (uni((5,), dtype=np.float16), TP.BFLOAT16), (uni((5,), dtype=np.float16), TP.INT16),
    (uni((5,)).astype(mld.bfloat16), TP.UINT16), (ints((5,), 0, 255, np.uint8), TP.INT8),
    (ints((5,), 0, 255, np.uint8), TP.FLOAT8E4M3FN), (uni((5,)).astype(mld.float8_e5m2), TP.UINT8),
    (np.array([True, False]), TP.INT8), (ints((5,), 0, 1, np.uint8), TP.BOOL),
    (np.exp2(rng.integers(-10, 10, 5)).astype(mld.float8_e8m0fnu), TP.UINT8),
    (ints((6,), -8, 7, mld.int4), TP.UINT4), (ints((6,), 0, 15, mld.uint4), TP.INT4),
    (ints((6,), 0, 15, mld.uint4), TP.FLOAT4E2M1), (uni((6,), -6, 6).astype(mld.float4_e2m1fn), TP.INT4),
    (ints((6,), -2, 1, mld.int2), TP.UINT2), (ints((6,), 0, 3, mld.uint2), TP.INT2),
]


@pytest.mark.parametrize("x,to", BITCAST_ROWS, ids=[f"{r[0].dtype}-{TP.DataType.Name(r[1])}" for r in BITCAST_ROWS])
def test_bitcast(x, to):
    run("BitCast", {"x": x}, {"to": to}, 26)


# ---------------------------------------------------------------- QuantizeLinear / DequantizeLinear
def zp_of(dtype, shape=()):
    if dtype in (mld.float8_e4m3fn, mld.float8_e4m3fnuz, mld.float8_e5m2, mld.float8_e5m2fnuz, mld.float4_e2m1fn):
        return np.zeros(shape, np.float32).astype(dtype)
    info = mld.iinfo(dtype)
    return rng.integers(int(info.min) // 2, int(info.max) // 2, shape, endpoint=True).astype(dtype)


X34 = uni((3, 4), -30, 30)
X345 = uni((3, 4, 5), -30, 30)
SC = np.float32(0.37)
# (inputs, attrs, opset)
Q_ROWS = [
    ({"x": X34, "s": SC, "zp": zp_of(np.uint8)}, {}, 10),
    ({"x": X34, "s": SC, "zp": zp_of(np.int8)}, {}, 13),
    ({"x": X34, "s": SC}, {}, 21),
    ({"x": X34 * 100, "s": SC, "zp": zp_of(np.int8)}, {}, 21),  # saturates
    ({"x": X34, "s": uni((4,), 0.1, 1), "zp": zp_of(np.uint8, (4,))}, {}, 13),
    ({"x": X345, "s": uni((3,), 0.1, 1), "zp": zp_of(np.int8, (3,))}, {"axis": 0}, 21),
    ({"x": X345, "s": uni((5,), 0.1, 1), "zp": zp_of(np.int16, (5,))}, {"axis": -1}, 21),
    ({"x": X345, "s": uni((3, 2, 5), 0.1, 1), "zp": zp_of(np.int8, (3, 2, 5))}, {"axis": 1, "block_size": 2}, 21),
    ({"x": X345, "s": uni((3, 2, 5), 0.1, 1), "zp": zp_of(np.uint8, (3, 2, 5))}, {"axis": 1, "block_size": 3}, 21),
    ({"x": X345, "s": uni((3, 4, 2), 0.1, 1), "zp": zp_of(mld.int4, (3, 4, 2))}, {"axis": 2, "block_size": 3}, 21),
    *[({"x": X34, "s": SC, "zp": zp_of(t)}, {}, 21) for t in (np.uint16, np.int16, mld.int4, mld.uint4)],
    *[({"x": X34, "s": SC, "zp": zp_of(t)}, {}, 25) for t in (mld.int2, mld.uint2)],
    *[({"x": X34, "s": SC}, {"output_dtype": t}, 21) for t in (TP.INT4, TP.UINT16, TP.INT8)],
    *[({"x": wide_floats(), "s": np.float32(0.5), "zp": zp_of(t)}, {"saturate": s}, 21)
      for t in (mld.float8_e4m3fn, mld.float8_e4m3fnuz, mld.float8_e5m2, mld.float8_e5m2fnuz) for s in (0, 1)],
    ({"x": uni((3, 4), -9, 9), "s": np.float32(0.5), "zp": zp_of(mld.float4_e2m1fn)}, {}, 23),
    ({"x": uni((3, 4), -9, 9), "s": np.float32(1.5)}, {"output_dtype": TP.FLOAT4E2M1}, 23),
    ({"x": X34.astype(np.float16), "s": SC, "zp": zp_of(np.int8)}, {}, 21),
    ({"x": X34, "s": np.float16(0.37), "zp": zp_of(np.uint8)}, {}, 21),
    ({"x": X34.astype(mld.bfloat16), "s": np.array(0.37, mld.bfloat16), "zp": zp_of(np.int8)}, {}, 21),
    ({"x": X34, "s": np.float32(0.37), "zp": zp_of(np.int8)}, {"precision": TP.FLOAT16}, 23),
    ({"x": X34.astype(np.float64), "s": np.float64(0.37), "zp": zp_of(np.int8)}, {}, 25),
    ({"x": np.array([np.nan, 0.5, 1.5, 2.5, -0.5, -1.5], np.float32), "s": np.float32(1), "zp": zp_of(np.int8)},
     {}, 21),
]


@pytest.mark.parametrize("inputs,attrs,opset", Q_ROWS, ids=[f"q{i}" for i in range(len(Q_ROWS))])
def test_quantize_linear(inputs, attrs, opset):
    run("QuantizeLinear", inputs, attrs, opset)


def qx(dtype, shape):
    if dtype in (mld.float8_e4m3fn, mld.float8_e4m3fnuz, mld.float8_e5m2, mld.float8_e5m2fnuz, mld.float4_e2m1fn):
        return uni(shape, -6, 6).astype(dtype)
    info = mld.iinfo(dtype)
    return rng.integers(int(info.min), int(info.max), shape, endpoint=True).astype(dtype)


DQ_ROWS = [
    ({"x": qx(np.uint8, (3, 4)), "s": SC, "zp": zp_of(np.uint8)}, {}, 19),
    ({"x": qx(np.int8, (3, 4)), "s": SC}, {}, 19),
    ({"x": qx(np.int32, (3, 4)), "s": SC}, {}, 21),
    ({"x": qx(np.int8, (3, 4, 5)), "s": uni((4,), 0.1, 1), "zp": zp_of(np.int8, (4,))}, {}, 19),
    ({"x": qx(np.uint8, (3, 4, 5)), "s": uni((5,), 0.1, 1), "zp": zp_of(np.uint8, (5,))}, {"axis": -1}, 21),
    ({"x": qx(np.int8, (3, 4, 5)), "s": uni((3, 4, 2), 0.1, 1), "zp": zp_of(np.int8, (3, 4, 2))},
     {"axis": 2, "block_size": 3}, 21),
    ({"x": qx(mld.int4, (6, 4)), "s": uni((2, 4), 0.1, 1), "zp": zp_of(mld.int4, (2, 4))},
     {"axis": 0, "block_size": 4}, 21),
    *[({"x": qx(t, (3, 4)), "s": SC, "zp": zp_of(t)}, {}, 21)
      for t in (np.int16, np.uint16, mld.int4, mld.uint4)],
    *[({"x": qx(t, (3, 4)), "s": SC, "zp": zp_of(t)}, {}, 25) for t in (mld.int2, mld.uint2)],
    *[({"x": qx(t, (3, 4)), "s": SC}, {}, 21)
      for t in (mld.float8_e4m3fn, mld.float8_e4m3fnuz, mld.float8_e5m2, mld.float8_e5m2fnuz, mld.float4_e2m1fn)],
    ({"x": qx(mld.float8_e4m3fn, (3, 4)), "s": SC, "zp": zp_of(mld.float8_e4m3fn)}, {}, 21),
    ({"x": qx(np.int8, (3, 4)), "s": np.float16(0.37), "zp": zp_of(np.int8)}, {}, 21),
    ({"x": qx(np.int8, (3, 4)), "s": np.array(0.37, mld.bfloat16), "zp": zp_of(np.int8)}, {}, 21),
    ({"x": qx(np.int8, (3, 4)), "s": np.float64(0.37), "zp": zp_of(np.int8)}, {}, 21),
    ({"x": qx(np.uint8, (3, 4)), "s": SC, "zp": zp_of(np.uint8)}, {"output_dtype": TP.FLOAT16}, 23),
    ({"x": qx(mld.int4, (3, 4)), "s": SC}, {"output_dtype": TP.BFLOAT16}, 25),
]


@pytest.mark.parametrize("inputs,attrs,opset", DQ_ROWS, ids=[f"dq{i}" for i in range(len(DQ_ROWS))])
def test_dequantize_linear(inputs, attrs, opset):
    run("DequantizeLinear", inputs, attrs, opset, tol={"rtol": 1e-6, "atol": 0.0})


@pytest.mark.parametrize("x", [uni((3, 4), -5, 9), uni((8,), 1, 3), uni((2, 3), -4, -1), np.zeros((2, 2), np.float32),
                               uni((2, 3, 4), -1000, 1000)], ids=["mixed", "positive", "negative", "zeros", "wide"])
def test_dynamic_quantize_linear(x):
    run("DynamicQuantizeLinear", {"x": x}, {}, 11, n_outputs=3, tol={"rtol": 1e-6, "atol": 0.0})


# ---------------------------------------------------------------- integer / quantized matmul and conv
MMI_ROWS = [
    {"a": qx(np.uint8, (3, 4)), "b": qx(np.uint8, (4, 5))},
    {"a": qx(np.uint8, (3, 4)), "b": qx(np.int8, (4, 5)), "azp": zp_of(np.uint8), "bzp": zp_of(np.int8)},
    {"a": qx(np.int8, (2, 3, 4)), "b": qx(np.int8, (4, 5)), "azp": zp_of(np.int8), "bzp": zp_of(np.int8, (5,))},
    {"a": qx(np.uint8, (2, 1, 3, 64)), "b": qx(np.uint8, (3, 64, 2)), "azp": zp_of(np.uint8), "bzp": zp_of(np.uint8)},
]


@pytest.mark.parametrize("inputs", MMI_ROWS, ids=[f"mmi{i}" for i in range(len(MMI_ROWS))])
def test_matmul_integer(inputs):
    run("MatMulInteger", inputs, {}, 10)


def test_matmul_integer_per_row_zero_point():
    # ONNX's reference broadcasts a 1-D a_zero_point along K; the spec makes it per row of A.
    a, b = qx(np.uint8, (3, 4)), qx(np.uint8, (4, 5))
    azp, bzp = zp_of(np.uint8, (3,)), zp_of(np.uint8, (5,))
    model_inputs = {"a": a, "b": b, "azp": azp, "bzp": bzp}
    from oracle import one_node_model
    model = one_node_model("MatMulInteger", model_inputs, {}, opset=10)
    got = kiln.interpret(kiln.parse(model), model_inputs, device=DEVICE)["out0"]
    got = got.cpu().numpy() if isinstance(got, torch.Tensor) else got
    expected = (a.astype(np.int32) - azp[:, None]) @ (b.astype(np.int32) - bzp)
    np.testing.assert_array_equal(got, expected)


def qlmm(adt, bdt, sdt, a_shape, b_shape, b_per_col=False):
    n = b_shape[-1]
    return {"a": qx(adt, a_shape), "a_scale": np.array(0.05, sdt), "a_zp": zp_of(adt),
            "b": qx(bdt, b_shape), "b_scale": (uni((n,), 0.01, 0.1) if b_per_col else np.array(0.03)).astype(sdt),
            "b_zp": zp_of(bdt, (n,) if b_per_col else ()), "y_scale": np.array(2.0, sdt), "y_zp": zp_of(adt)}


QLMM_ROWS = [
    (qlmm(np.uint8, np.uint8, np.float32, (3, 4), (4, 5)), 10),
    (qlmm(np.int8, np.int8, np.float32, (2, 3, 4), (2, 4, 5)), 10),
    (qlmm(np.uint8, np.int8, np.float32, (3, 16), (16, 5), b_per_col=True), 21),
    (qlmm(np.int8, np.uint8, np.float16, (3, 4), (4, 5)), 21),
]


@pytest.mark.parametrize("inputs,opset", QLMM_ROWS, ids=[f"qlmm{i}" for i in range(len(QLMM_ROWS))])
def test_qlinear_matmul(inputs, opset):
    run("QLinearMatMul", inputs, {}, opset)


CONV_ROWS = [  # (x shape, w shape, attrs)
    ((1, 3, 7, 7), (4, 3, 3, 3), {}),
    ((2, 3, 7, 6), (4, 3, 3, 2), {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
    ((1, 4, 8, 8), (6, 2, 3, 3), {"group": 2, "dilations": [2, 2]}),
    ((1, 3, 7, 7), (4, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 3, 8, 7), (4, 3, 2, 3), {"auto_pad": "SAME_LOWER"}),
    ((1, 3, 9), (2, 3, 3), {"pads": [1, 1], "kernel_shape": [3]}),
    ((1, 2, 4, 5, 5), (3, 2, 2, 3, 3), {"strides": [1, 2, 2]}),
]


@pytest.mark.parametrize("xs,ws,attrs", CONV_ROWS, ids=[f"conv{i}" for i in range(len(CONV_ROWS))])
def test_conv_integer(xs, ws, attrs):
    inputs = {"x": qx(np.uint8, xs), "w": qx(np.uint8, ws), "xzp": zp_of(np.uint8), "wzp": zp_of(np.uint8)}
    run("ConvInteger", inputs, attrs, 10)


@pytest.mark.parametrize("xs,ws,attrs", CONV_ROWS[:5], ids=[f"qconv{i}" for i in range(5)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qlinear_conv(xs, ws, attrs, per_channel):
    m = ws[0]
    inputs = {"x": qx(np.uint8, xs), "xs": np.float32(0.05), "xzp": zp_of(np.uint8),
              "w": qx(np.int8, ws), "ws": uni((m,), 0.01, 0.1) if per_channel else np.float32(0.03),
              "wzp": np.zeros((m,) if per_channel else (), np.int8),
              "ys": np.float32(0.7), "yzp": zp_of(np.uint8), "b": ints((m,), -1000, 1000, np.int32)}
    run("QLinearConv", inputs, attrs, 10)


# ---------------------------------------------------------------- kernels on their own
def test_convert_matches_numpy_wrap_for_ints():
    x = torch.tensor([-129, 128, 255, 256, -1, 70000], dtype=torch.int64)
    assert convert(x, DType.INT8).tolist() == np.array(x.tolist()).astype(np.int8).tolist()
    assert convert(x, DType.UINT4).tolist() == [15, 0, 15, 0, 15, 0]
