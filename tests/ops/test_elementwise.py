"""Elementwise ops (arithmetic, math, comparison, logic, bitwise) through Kiln against onnx.reference,
beyond the node suite: every numeric dtype (uint16/32/64 and bfloat16 included), broadcasting,
values past 2**63 for uint64, integer division edge cases and old-opset attribute forms."""
from __future__ import annotations

import functools
import os
import zlib

import ml_dtypes
import numpy as np
import pytest
from oracle import check_op as _check_op

import kiln

# KILN_TEST_DEVICE=cuda runs the same rows on a GPU.
DEVICE = os.environ.get("KILN_TEST_DEVICE", "cpu")
check_op = functools.partial(_check_op, device=DEVICE)


def run_kiln(model, feed: dict) -> np.ndarray:
    """Kiln's first output for a one-node model, as numpy."""
    got = kiln.interpret(kiln.parse(model), feed, device=DEVICE)["out0"]
    return got.cpu().numpy() if hasattr(got, "cpu") else got

INTS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
FLOATS = ["float16", "float32", "float64", "bfloat16"]
NUMERIC = FLOATS + INTS
TOL = {"float16": (2e-3, 2e-3), "bfloat16": (2e-2, 2e-2), "float32": (1e-5, 1e-6), "float64": (1e-6, 1e-7)}


def _np_dtype(name: str):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def rand(shape, dtype: str, lo=-10, hi=10, seed=0, nonzero=False) -> np.ndarray:
    """Random values of ``dtype`` within [lo, hi] clipped to the type's range."""
    rng = np.random.default_rng(seed + zlib.crc32(repr((tuple(shape), dtype)).encode()))
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in INTS:
        info = np.iinfo(dtype)
        x = rng.integers(max(lo, info.min), min(hi, info.max), size=shape, endpoint=True, dtype=dtype)
        if nonzero:
            x[x == 0] = 1
        return x
    x = rng.uniform(lo, hi, size=shape)
    if nonzero:
        x[np.abs(x) < 0.1] = 0.5
    return x.astype(_np_dtype(dtype))


def big_uint64(shape, seed=0) -> np.ndarray:
    """uint64 values across the full range, half of them >= 2**63."""
    return np.random.default_rng(seed).integers(0, 2 ** 64 - 1, size=shape, dtype=np.uint64, endpoint=True)


def tol(dtype: str) -> dict:
    rtol, atol = TOL.get(dtype, (0, 0))
    return {"rtol": rtol, "atol": atol}


# -- binary arithmetic, all numeric dtypes, broadcasting ---------------------------------------------

SHAPES = [((2, 3, 4), (3, 1)), ((), (2, 3)), ((5,), (5,))]


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_arith(op, dtype):
    for sa, sb in SHAPES:
        hi = 5 if op == "Mul" else 100
        a, b = rand(sa, dtype, -hi, hi), rand(sb, dtype, -hi, hi, seed=1, nonzero=op == "Div")
        check_op(op, {"a": a, "b": b}, **tol(dtype))


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64", "uint8", "uint16", "uint32"])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_arith_wraps(op, dtype):
    info = np.iinfo(dtype)
    a = np.array([info.max, info.min, info.max // 2 + 3], dtype=dtype)
    b = np.array([info.max, 1 if info.min else info.max, 7], dtype=dtype)
    check_op(op, {"a": a, "b": b})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "BitwiseAnd", "BitwiseOr",
                                "BitwiseXor", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"])
def test_uint64_full_range(op):
    a, b = big_uint64((64,)), big_uint64((64,), seed=1)
    b[:8] = a[:8]
    b[8:16] = np.arange(1, 9, dtype=np.uint64)
    b[b == 0] = 1
    check_op(op, {"a": a, "b": b})


@pytest.mark.parametrize("dtype", INTS)
def test_int_div_truncates(dtype):
    a = rand((40,), dtype, -100, 100)
    b = rand((40,), dtype, -7, 7, seed=3, nonzero=True)
    check_op("Div", {"a": a, "b": b})


def test_int_div_by_zero_is_zero():
    got = run_kiln(_model("Div", np.int32), {"a": np.array([5, -3], np.int32), "b": np.array([0, 0], np.int32)})
    assert got.tolist() == [0, 0]


def _model(op, dt):
    from oracle import one_node_model
    return one_node_model(op, {"a": np.zeros(2, dt), "b": np.zeros(2, dt)}, {})


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", NUMERIC)
def test_mod(dtype, fmod):
    a = rand((3, 8), dtype, -50, 50)
    b = rand((8,), dtype, -9, 9, seed=5, nonzero=True)
    check_op("Mod", {"a": a, "b": b}, {"fmod": fmod}, **tol(dtype))


def test_mod_float_signs():
    a = np.array([-0.0, 0.0, 6.0, -6.0, 5.5, -5.5, 1.0, -1.0, np.inf], np.float32)
    b = np.array([2.0, -2.0, 3.0, 3.0, -2.0, 2.0, np.inf, np.inf, 2.0], np.float32)
    check_op("Mod", {"a": a, "b": b}, {"fmod": 0})
    check_op("Mod", {"a": a, "b": b}, {"fmod": 1})


POW_TYPES = [("float32", "float32"), ("float32", "int64"), ("float16", "float32"), ("float64", "int32"),
             ("int32", "int32"), ("int64", "int64"), ("int32", "float32"), ("int64", "float64"),
             ("float32", "uint8"), ("bfloat16", "bfloat16")]


@pytest.mark.parametrize("tx,ty", POW_TYPES)
def test_pow(tx, ty):
    x = rand((3, 4), tx, 1, 4)
    y = rand((4,), ty, 0, 3, seed=2)
    check_op("Pow", {"x": x, "y": y}, **tol(tx))


def test_pow_negative_base_float():
    x = np.array([-2.0, -0.5, 0.0, 2.0], np.float32)
    y = np.array([3.0, 2.0, 0.0, -1.0], np.float32)
    check_op("Pow", {"x": x, "y": y})


# -- unary math -------------------------------------------------------------------------------------

UNARY = {"Abs": (-5, 5), "Neg": (-5, 5), "Sign": (-5, 5), "Ceil": (-5, 5), "Floor": (-5, 5),
         "Round": (-5, 5), "Exp": (-5, 5), "Log": (0.1, 10), "Sqrt": (0, 10), "Reciprocal": (0.5, 5),
         "Sin": (-5, 5), "Cos": (-5, 5), "Tan": (-1.2, 1.2), "Asin": (-1, 1), "Acos": (-1, 1),
         "Atan": (-5, 5), "Sinh": (-3, 3), "Cosh": (-3, 3), "Tanh": (-5, 5), "Asinh": (-5, 5),
         "Acosh": (1, 5), "Atanh": (-0.9, 0.9), "Erf": (-3, 3)}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_float(op, dtype):
    lo, hi = UNARY[op]
    check_op(op, {"x": rand((4, 5), dtype, lo, hi)}, **tol(dtype))


@pytest.mark.parametrize("dtype", INTS)
@pytest.mark.parametrize("op", ["Abs", "Sign", "Neg"])
def test_unary_int(op, dtype):
    if op == "Neg" and dtype.startswith("u"):
        pytest.skip("Neg has no unsigned types in ONNX")
    check_op(op, {"x": rand((4, 5), dtype, -100, 100)})


def test_sign_of_nan_and_zeros():
    check_op("Sign", {"x": np.array([np.nan, -0.0, 0.0, -np.inf, np.inf, -2.5], np.float32)})


def test_round_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, np.nan, np.inf, -0.0], np.float32)
    check_op("Round", {"x": x})


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float8e4m3fn", "float8e5m2"])
@pytest.mark.parametrize("attrs", [{}, {"detect_positive": 0}, {"detect_negative": 0},
                                   {"detect_positive": 0, "detect_negative": 0}])
def test_isinf_isnan(dtype, attrs):
    np_dt = {"float8e4m3fn": ml_dtypes.float8_e4m3fn, "float8e5m2": ml_dtypes.float8_e5m2}.get(dtype)
    x = np.array([1.0, -np.inf, np.inf, np.nan, 0.0, -3.0], np.float32).astype(np_dt or _np_dtype(dtype))
    check_op("IsInf", {"x": x}, attrs)
    check_op("IsNaN", {"x": x})


# -- variadic ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min(op, dtype):
    ins = {"a": rand((2, 3, 4), dtype, -50, 50), "b": rand((4,), dtype, -50, 50, seed=1),
           "c": rand((3, 1), dtype, -50, 50, seed=2)}
    check_op(op, ins, **tol(dtype))
    check_op(op, {"a": ins["a"]}, **tol(dtype))


def test_max_min_nan_propagates():
    a = np.array([1.0, np.nan, 3.0], np.float32)
    b = np.array([np.nan, 2.0, 1.0], np.float32)
    check_op("Max", {"a": a, "b": b})
    check_op("Min", {"a": a, "b": b})


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", ["Sum", "Mean"])
def test_sum_mean(op, dtype):
    ins = {"a": rand((2, 3, 4), dtype), "b": rand((4,), dtype, seed=1), "c": rand((3, 1), dtype, seed=2)}
    check_op(op, ins, **tol(dtype))
    check_op(op, {"a": ins["a"]}, **tol(dtype))


# -- Clip -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", NUMERIC)
def test_clip(dtype):
    x = rand((3, 4), dtype, -100, 100)
    lo, hi = rand((), dtype, -20, 0), rand((), dtype, 0, 30, seed=1)
    check_op("Clip", {"x": x, "min": lo, "max": hi}, **tol(dtype))
    check_op("Clip", {"x": x, "min": lo, "max": None}, **tol(dtype))
    check_op("Clip", {"x": x, "min": None, "max": hi}, **tol(dtype))
    check_op("Clip", {"x": x, "min": hi, "max": lo}, **tol(dtype))  # min > max: everything becomes max
    check_op("Clip", {"x": x}, **tol(dtype))


def test_clip_uint64_full_range():
    x = big_uint64((32,))
    lo, hi = np.array(2 ** 62, np.uint64), np.array(2 ** 63 + 12345, np.uint64)
    check_op("Clip", {"x": x, "min": lo, "max": hi}, const_inputs=("min", "max"))


@pytest.mark.parametrize("attrs", [{"min": -1.5, "max": 2.0}, {"min": 0.0}, {"max": -0.5}, {}])
def test_clip_opset6_attributes(attrs):
    check_op("Clip", {"x": rand((3, 4), "float32")}, attrs, opset=6)


# -- Where, comparisons, logic ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", NUMERIC + ["bool"])
def test_where(dtype):
    c = rand((2, 1, 4), "bool")
    x, y = rand((3, 4), dtype), rand((2, 3, 1), dtype, seed=1)
    check_op("Where", {"c": c, "x": x, "y": y}, **tol(dtype))


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("op", ["Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"])
def test_compare(op, dtype):
    a, b = rand((3, 4), dtype, -3, 3), rand((4,), dtype, -3, 3, seed=1)
    check_op(op, {"a": a, "b": b})


def test_equal_bool():
    check_op("Equal", {"a": rand((3, 4), "bool"), "b": rand((4,), "bool", seed=1)})


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logic(op):
    check_op(op, {"a": rand((2, 3, 4), "bool"), "b": rand((3, 1), "bool", seed=1)})
    check_op("Not", {"x": rand((2, 3), "bool")})


@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div", "Pow", "Equal", "Greater", "Less", "And"])
def test_opset6_axis_broadcast(op):
    """Before opset 7 B broadcasts onto A from ``axis`` (here B of shape (3,) onto A's dim 1)."""
    from oracle import one_node_model
    dt = "bool" if op == "And" else ("float32" if op != "Equal" else "int32")
    a, b = rand((2, 3, 4), dt, 1, 5), rand((3,), dt, 1, 5, seed=1)
    model = one_node_model(op, {"a": a, "b": b}, {"broadcast": 1, "axis": 1}, opset=6)
    got = run_kiln(model, {"a": a, "b": b})
    fn = {"Add": np.add, "Mul": np.multiply, "Sub": np.subtract, "Div": np.divide, "Pow": np.power,
          "Equal": np.equal, "Greater": np.greater, "Less": np.less, "And": np.logical_and}[op]
    np.testing.assert_allclose(got, fn(a, b[:, None]).astype(got.dtype), rtol=1e-6)


# -- bitwise ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", INTS)
@pytest.mark.parametrize("op", ["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
def test_bitwise(op, dtype):
    check_op(op, {"a": rand((3, 4), dtype, -1000, 1000), "b": rand((4,), dtype, -1000, 1000, seed=1)})


@pytest.mark.parametrize("dtype", INTS)
def test_bitwise_not(dtype):
    check_op("BitwiseNot", {"x": rand((3, 4), dtype, -1000, 1000)})


@pytest.mark.parametrize("dtype", INTS)
@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bitshift(dtype, direction):
    bits = np.dtype(dtype).itemsize * 8
    info = np.iinfo(dtype)
    x = big_uint64((4, 16)).astype(dtype) if dtype == "uint64" else rand((4, 16), dtype, info.min, info.max)
    y = np.arange(-3 if info.min else 0, bits + 3).astype(dtype)[:16]
    y = np.resize(y, (16,))
    check_op("BitShift", {"x": x, "y": y}, {"direction": direction}, opset=28)


def test_bitshift_opset11():
    x = np.array([16, 4, 1], np.uint32)
    y = np.array([1, 2, 3], np.uint32)
    check_op("BitShift", {"x": x, "y": y}, {"direction": "RIGHT"}, opset=11)
    check_op("BitShift", {"x": x, "y": y}, {"direction": "LEFT"}, opset=11)


# -- static types (kernels on meta tensors, small constants as real CPU tensors) ---------------------


@pytest.mark.parametrize("op,attrs", [("Add", {}), ("Div", {}), ("Mod", {}), ("Pow", {}), ("Max", {}), ("Sum", {}),
                                      ("Equal", {}), ("Less", {}), ("BitwiseAnd", {}),
                                      ("BitShift", {"direction": "RIGHT"}), ("Clip", {}), ("Where", {})])
def test_types_propagate_with_small_constants(op, attrs):
    from kiln.passes.propagate import propagate
    from oracle import one_node_model
    x = np.zeros((5, 3), np.int64)
    if op == "Clip":
        inputs = {"x": x, "lo": np.array(1, np.int64), "hi": np.array(4, np.int64)}
    elif op == "Where":
        inputs = {"x": x.astype(bool), "a": np.arange(3, dtype=np.int64), "b": np.arange(5, dtype=np.int64)[:, None]}
    else:
        inputs = {"x": x, "c": np.arange(1, 4, dtype=np.int64)}
    consts = tuple(n for n in inputs if n != "x")
    graph = kiln.parse(one_node_model(op, inputs, attrs, const_inputs=consts))
    t = propagate(graph).types[graph.outputs[0].id]
    want = "bool" if op in ("Equal", "Less") else "int64"
    assert (t.dtype.name.lower(), t.shape) == (want, (5, 3))


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_special_values(op):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 1e30, -1e30], np.float32)
    check_op(op, {"x": x})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Less", "Equal"])
def test_binary_special_values(op):
    s = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0, -0.5, 3.0], np.float32)
    a, b = np.meshgrid(s, s)
    check_op(op, {"a": a, "b": b}, {"fmod": 1} if op == "Mod" else {})
