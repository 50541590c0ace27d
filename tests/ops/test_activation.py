"""Activation ops through Kiln against onnx.reference: attribute combinations, float16/bfloat16/float64,
integer inputs where ONNX allows them, and old opsets."""
from __future__ import annotations

import numpy as np
import pytest
from test_elementwise import FLOATS, check_op, rand, run_kiln, tol

# (op, attrs, opset)
ROWS = [
    ("Relu", {}, 21), ("Relu", {}, 6),
    ("Sigmoid", {}, 21),
    ("Elu", {}, 21), ("Elu", {"alpha": 0.3}, 22), ("Elu", {"alpha": 2.0}, 6),
    ("Selu", {}, 21), ("Selu", {"alpha": 2.0, "gamma": 0.5}, 22),
    ("Celu", {}, 21), ("Celu", {"alpha": 0.5}, 21), ("Celu", {"alpha": 2.0}, 28),
    ("LeakyRelu", {}, 21), ("LeakyRelu", {"alpha": 0.2}, 16), ("LeakyRelu", {"alpha": -1.5}, 6),
    ("HardSigmoid", {}, 21), ("HardSigmoid", {"alpha": 0.5, "beta": 0.1}, 22),
    ("HardSwish", {}, 21),
    ("Softplus", {}, 21), ("Softsign", {}, 21), ("Mish", {}, 21),
    ("Gelu", {}, 20), ("Gelu", {"approximate": "tanh"}, 20), ("Gelu", {"approximate": "none"}, 21),
    ("Swish", {}, 24), ("Swish", {"alpha": 1.702}, 24), ("Swish", {"alpha": -0.5}, 24),
    ("ThresholdedRelu", {}, 21), ("ThresholdedRelu", {"alpha": -0.5}, 21), ("ThresholdedRelu", {"alpha": 2.5}, 22),
    ("Shrink", {}, 21), ("Shrink", {"lambd": 1.5, "bias": 1.5}, 21), ("Shrink", {"lambd": 0.0, "bias": 0.5}, 21),
    ("Tanh", {}, 21),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op,attrs,opset", ROWS, ids=[f"{r[0]}-{i}" for i, r in enumerate(ROWS)])
def test_activation(op, attrs, opset, dtype):
    if dtype == "bfloat16" and (op, opset) in {("Celu", 21), ("Shrink", 21)}:
        pytest.skip("bfloat16 not among the op's types at this opset")
    x = rand((3, 4, 5), dtype, -6, 6)
    x.flat[:4] = np.array([0.0, -0.0, 1.0, -1.0]).astype(x.dtype)  # around kinks and thresholds
    check_op(op, {"x": x}, attrs, opset=opset, **tol(dtype))


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64"])
def test_relu_int(dtype):
    check_op("Relu", {"x": rand((4, 5), dtype, -100, 100)})


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64", "uint8", "uint16", "uint32", "uint64"])
@pytest.mark.parametrize("attrs", [{}, {"lambd": 3.0, "bias": 2.0}, {"lambd": 2.5, "bias": 0.5}])
def test_shrink_int(dtype, attrs):
    check_op("Shrink", {"x": rand((4, 5), dtype, -10, 10)}, attrs)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "bfloat16", "int32", "int64", "uint32",
                                   "uint64"])
@pytest.mark.parametrize("slope_shape", [(), (1,), (5,), (4, 1), (3, 4, 5)])
def test_prelu(dtype, slope_shape):
    x = rand((3, 4, 5), dtype, -10, 10)
    slope = rand(slope_shape, dtype, -3, 3, seed=1)
    check_op("PRelu", {"x": x, "slope": slope}, **tol(dtype))


def test_prelu_opset6_per_channel_slope():
    """Before opset 7 a 1-D slope holds one value per channel (dim 1)."""
    from oracle import one_node_model
    x, slope = rand((2, 3, 4, 4), "float32"), np.array([0.1, -0.5, 2.0], np.float32)
    model = one_node_model("PRelu", {"x": x, "slope": slope}, {}, opset=6)
    got = run_kiln(model, {"x": x, "slope": slope})
    np.testing.assert_allclose(got, np.where(x < 0, x * slope[:, None, None], x), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "bfloat16"])
@pytest.mark.parametrize("alpha", [None, 1.0, 1.702, 0.25])
def test_swiglu(dtype, alpha):
    a, b = rand((2, 3, 8), dtype, -5, 5), rand((2, 3, 8), dtype, -5, 5, seed=1)
    check_op("SwiGLU", {"a": a, "b": b}, {} if alpha is None else {"alpha": alpha}, opset=28, **tol(dtype))


SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 1e30, -1e30], np.float32)


@pytest.mark.parametrize("op,attrs,opset", ROWS, ids=[f"{r[0]}-{i}" for i, r in enumerate(ROWS)])
def test_activation_special_values(op, attrs, opset):
    check_op(op, {"x": SPECIALS}, attrs, opset=opset)
