"""Reductions, normalizations and linear algebra through Kiln against onnx.reference, beyond the node
suite: more dtypes (uint16/32/64 with values past 2**63, bool, float16, bfloat16), the old-opset forms
(axes/k as attributes, 2-D coerced softmax, per-group GroupNormalization scale), attribute combinations
and edge cases (empty tensors, empty axes, ties). Where onnx.reference is itself wrong (LRN loops over
the batch dim; LpNormalization p=1 sums signed values) onnxruntime is the oracle."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from oracle import check_op, one_node_model

import kiln

TOL = {"float16": (3e-3, 3e-3), "bfloat16": (3e-2, 3e-2), "float32": (1e-5, 1e-5), "float64": (1e-9, 1e-12)}


def rand(shape, dtype="float32", lo=-3.0, hi=3.0, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype == "uint64_big":
        return rng.integers(0, 2 ** 64 - 1, size=shape, dtype=np.uint64, endpoint=True)
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return rng.integers(max(int(lo), info.min), min(int(hi), info.max), size=shape, endpoint=True, dtype=dtype)
    x = rng.uniform(lo, hi, size=shape)
    return x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


def tol(x: np.ndarray) -> dict:
    rtol, atol = TOL.get(np.asarray(x).dtype.name, (0, 0))
    return {"rtol": rtol, "atol": atol}


def i64(*v) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def check_expected(op_type, inputs, attrs, opset, expected, rtol=1e-5, atol=1e-6):
    """Run one node through Kiln and compare its first output with ``expected``."""
    model = one_node_model(op_type, inputs, attrs, 1, opset)
    got = kiln.interpret(kiln.parse(model), inputs)["out0"]
    assert got.dtype == expected.dtype, f"{op_type}: dtype {got.dtype}, expected {expected.dtype}"
    assert got.shape == expected.shape, f"{op_type}: shape {got.shape}, expected {expected.shape}"
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol)


def check_ort(op_type, inputs, attrs, opset, rtol=1e-5, atol=1e-6):
    """Like check_op, with onnxruntime as the oracle."""
    import onnxruntime as ort
    model = one_node_model(op_type, inputs, attrs, 1, opset)
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    check_expected(op_type, inputs, attrs, opset, sess.run(None, inputs)[0], rtol, atol)


# -- Reduce* ----------------------------------------------------------------------------------------

REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]
# (axes, keepdims, noop_with_empty_axes); axes None = not given
AXES = [(None, 1, 0), ([1], 0, 0), ([-1, 0], 1, 0), ([0, 2], 0, 0), ([], 1, 1), ([], 0, 0)]


def _axes_in_input(op, opset):
    return opset >= 18 or (op == "ReduceSum" and opset >= 13)


def _reduce(op, x, axes, keepdims, noop, opset, const_axes=True, **kw):
    attrs = {"keepdims": keepdims}
    inputs = {"x": x}
    if _axes_in_input(op, opset):
        attrs["noop_with_empty_axes"] = noop
        if axes is not None:
            inputs["axes"] = np.array(axes, dtype=np.int64)
    elif axes:
        attrs["axes"] = axes
    check_op(op, inputs, attrs, opset=opset, const_inputs=("axes",) if const_axes else (), **(kw or tol(x)))


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_axes_forms(op, opset):
    lo = 0.1 if op == "ReduceLogSum" else -2.0
    x = rand((3, 4, 5), lo=lo, hi=2.0)
    for axes, keepdims, noop in AXES:
        if axes == [] and not _axes_in_input(op, opset):
            continue
        _reduce(op, x, axes, keepdims, noop, opset)
    if _axes_in_input(op, opset):
        _reduce(op, x, [1, 2], 1, 0, opset, const_axes=False)  # axes known only at run time


REDUCE_DTYPES = {
    "ReduceSum": ["float16", "float64", "int32", "int64", "uint32", "uint64", "bfloat16"],
    "ReduceMean": ["float16", "float64", "int32", "int64", "uint32"],
    "ReduceMax": ["float16", "int8", "uint8", "int32", "uint32", "uint64_big", "bool"],
    "ReduceMin": ["float16", "int8", "uint8", "int64", "uint32", "uint64_big", "bool"],
    "ReduceProd": ["float16", "int32", "int64", "uint32", "uint64"],
    "ReduceSumSquare": ["float16", "int64", "uint64"],
    "ReduceL1": ["float16", "int32", "int64", "uint32"],
    "ReduceL2": ["float16", "float64"],
    "ReduceLogSum": ["float16", "float64"],
    "ReduceLogSumExp": ["float16", "float64"],
}


@pytest.mark.parametrize("op,dtype", [(op, d) for op, ds in REDUCE_DTYPES.items() for d in ds])
def test_reduce_dtypes(op, dtype):
    lo, hi = (0.1, 2.0) if op == "ReduceLogSum" else (-3, 3)
    if dtype.startswith("uint"):
        lo = 0
    x = rand((2, 3, 4), dtype, lo, hi, seed=1)
    opset = 20 if op in ("ReduceMax", "ReduceMin") else 18
    for axes, keepdims, noop in AXES[:4]:
        _reduce(op, x, axes, keepdims, noop, opset, **tol(x))


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_empty(op):
    x = np.zeros((2, 0, 3), np.float32)
    for axes in ([1], [0], None):
        for keepdims in (0, 1):
            _reduce(op, x, axes, keepdims, 0, 18)
    if op in ("ReduceMax", "ReduceMin"):
        _reduce(op, np.zeros((0, 3), np.int32), [0], 1, 0, 20)
        _reduce(op, np.zeros((0, 3), bool), [0], 0, 0, 20)


def test_reduce_scalar_input():
    # a rank-0 tensor reduces to the op's elementwise step of its one value (onnx.reference fails here)
    x = np.array(1.5, np.float32)
    one = {"ReduceL1": 1.5, "ReduceL2": 1.5, "ReduceSumSquare": 2.25, "ReduceLogSum": np.log(1.5)}
    for op in REDUCE_OPS:
        check_expected(op, {"x": x}, {}, 18, np.array(one.get(op, 1.5), np.float32))


# -- ArgMax / ArgMin ----------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int32", "uint8", "int64", "uint16", "uint32", "uint64_big"])
def test_arg_extreme(op, dtype):
    # small integer ranges make ties, which select_last_index resolves
    x = rand((3, 4, 5), dtype, 0, 3, seed=2) if dtype != "uint64_big" else rand((3, 4, 5), dtype)
    for axis in (0, 1, -1):
        for keepdims in (0, 1):
            for last in (0, 1):
                check_op(op, {"x": x}, {"axis": axis, "keepdims": keepdims, "select_last_index": last}, opset=13)
    check_op(op, {"x": x}, {"axis": 2}, opset=11)


# -- CumSum / CumProd ---------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["CumSum", "CumProd"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int32", "int64", "uint32", "uint64"])
def test_scan(op, dtype):
    x = rand((3, 4, 2), dtype, 0 if dtype.startswith("u") else -2, 3, seed=3)
    opset = 26 if op == "CumProd" else 14
    for axis_dtype in (np.int32, np.int64):
        for axis in (0, 1, -1):
            for exclusive in (0, 1):
                for reverse in (0, 1):
                    check_op(op, {"x": x, "axis": np.array(axis, axis_dtype)},
                             {"exclusive": exclusive, "reverse": reverse}, opset=opset, **tol(x))


def test_scan_empty_axis():
    x = np.zeros((2, 0), np.float32)
    for op, opset in (("CumSum", 14), ("CumProd", 26)):
        check_op(op, {"x": x, "axis": np.array(1, np.int64)}, {"exclusive": 1, "reverse": 1}, opset=opset)


# -- TopK ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int32", "int64", "uint8", "uint32",
                                   "uint64_big"])
def test_top_k(dtype):
    x = rand((3, 6, 4), dtype, 0, 4, seed=4) if dtype != "uint64_big" else rand((3, 6, 4), dtype)
    for axis in (1, -1, 0):
        for k in (0, 1, 3):
            for largest in (0, 1):
                check_op("TopK", {"x": x, "k": i64(k)}, {"axis": axis, "largest": largest, "sorted": 1},
                         n_outputs=2, opset=11, const_inputs=("k",))
    check_op("TopK", {"x": x, "k": i64(6)}, {"axis": 1}, n_outputs=2, opset=11)  # k = full axis, k not constant


def test_top_k_old_opsets():
    x = rand((4, 5), seed=5)
    check_op("TopK", {"x": x}, {"k": 2, "axis": 0}, n_outputs=2, opset=1)
    check_op("TopK", {"x": x, "k": i64(3)}, {}, n_outputs=2, opset=10)


# -- Softmax / LogSoftmax / Hardmax -------------------------------------------------------------------

def _coerced_2d(op, x, axis=1):
    """The opset<13 definition: normalize each row of x reshaped to [prod(shape[:axis]), -1]."""
    axis %= x.ndim
    rows = x.astype(np.float64).reshape(int(np.prod(x.shape[:axis])), -1)
    shifted = rows - rows.max(axis=1, keepdims=True)
    if op == "Hardmax":
        y = np.zeros_like(rows)
        y[np.arange(len(rows)), rows.argmax(axis=1)] = 1
    elif op == "Softmax":
        y = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    else:
        y = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return y.reshape(x.shape).astype(x.dtype)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_family(op, opset):
    for dtype in ("float32", "float16", "float64"):
        x = rand((2, 3, 4), dtype, seed=6)
        if op == "Hardmax":
            x = np.round(x)  # ties: the first maximum wins
        for axis in (None, 0, 1, 2, -1):
            attrs = {} if axis is None else {"axis": axis}
            if opset < 13:
                # onnx.reference ignores the opset<13 coercion to 2-D
                check_expected(op, {"x": x}, attrs, opset, _coerced_2d(op, x, **attrs), **tol(x))
            else:
                check_op(op, {"x": x}, attrs, opset=opset, **tol(x))


def test_softmax_empty():
    check_op("Softmax", {"x": np.zeros((2, 0), np.float32)}, {}, opset=13)


# -- BatchNormalization -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 5), (1, 3, 2, 2, 2)])
def test_batch_norm(shape):
    c = shape[1]
    x = rand(shape, seed=7)
    params = {"scale": rand((c,), seed=8), "B": rand((c,), seed=9), "mean": rand((c,), seed=10),
              "var": rand((c,), lo=0.5, hi=2, seed=11)}
    check_op("BatchNormalization", {"x": x, **params}, {"epsilon": 1e-3}, opset=15)
    # onnx.reference's BatchNormalization-9 applies the momentum update even in inference
    check_ort("BatchNormalization", {"x": x, **params}, {"epsilon": 1e-3}, opset=9)
    check_op("BatchNormalization", {"x": x.astype(np.float16), **params}, {}, opset=15, rtol=3e-3, atol=3e-3)
    check_op("BatchNormalization", {"x": x, **params}, {"training_mode": 1, "momentum": 0.7}, n_outputs=3,
             opset=15)


def test_batch_norm_not_spatial():
    # opset<9 spatial=0: scale/B/mean/var hold one value per (channel, position)
    x = rand((2, 3, 4), seed=40)
    p = {k: rand((3, 4), lo=0.5, hi=2, seed=41 + i) for i, k in enumerate(("scale", "B", "mean", "var"))}
    expected = (x - p["mean"]) / np.sqrt(p["var"] + 1e-5) * p["scale"] + p["B"]
    check_expected("BatchNormalization", {"x": x, **p}, {"spatial": 0}, 7, expected.astype(np.float32))


# -- Instance / Layer / Group / RMS normalization -----------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 2, 2)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_instance_norm(shape, dtype):
    x = rand(shape, dtype, seed=12)
    c = shape[1]
    check_op("InstanceNormalization", {"x": x, "s": rand((c,), dtype, seed=13), "b": rand((c,), dtype, seed=14)},
             {"epsilon": 1e-4}, opset=6, **tol(x))


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_layer_norm(axis):
    x = rand((2, 3, 4), seed=15)
    norm_shape = x.shape[axis % 3:]
    s, b = rand(norm_shape, seed=16), rand(norm_shape, seed=17)
    check_op("LayerNormalization", {"x": x, "s": s, "b": b}, {"axis": axis}, n_outputs=3, opset=17)
    check_op("LayerNormalization", {"x": x, "s": s}, {"axis": axis, "epsilon": 0.1}, opset=17)
    xh, sh, bh = x.astype(np.float16), s.astype(np.float16), b.astype(np.float16)
    check_op("LayerNormalization", {"x": xh, "s": sh, "b": bh}, {"axis": axis}, opset=17, rtol=5e-3, atol=5e-3)
    # a Scale that broadcasts into the normalized shape
    check_op("LayerNormalization", {"x": x, "s": s[..., :1]}, {"axis": axis}, opset=17)


def test_layer_norm_half_stashes_float():
    x = rand((2, 8), "float16", seed=18)
    model = one_node_model("LayerNormalization", {"x": x, "s": np.ones(8, np.float16)}, {}, 3, 17)
    got = kiln.interpret(kiln.parse(model), {"x": x, "s": np.ones(8, np.float16)})
    # ONNX type inference gives Mean and InvStdDev the stash type (float)
    assert got["out0"].dtype == np.float16 and got["out1"].dtype == np.float32 and got["out2"].dtype == np.float32
    xf = x.astype(np.float32)
    np.testing.assert_allclose(got["out1"], xf.mean(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["out2"], 1 / np.sqrt(xf.var(-1, keepdims=True) + 1e-5), rtol=1e-4)


@pytest.mark.parametrize("opset,groups", [(18, 2), (18, 1), (21, 2), (21, 4), (21, 1)])
def test_group_norm(opset, groups):
    x = rand((2, 4, 3, 2), seed=19)
    n_params = groups if opset < 21 else 4
    check_op("GroupNormalization", {"x": x, "s": rand((n_params,), seed=20), "b": rand((n_params,), seed=21)},
             {"num_groups": groups, "epsilon": 1e-3}, opset=opset, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_rms_norm(axis, dtype):
    x = rand((2, 3, 4), dtype, seed=22)
    s = rand(x.shape[axis % 3:], dtype, seed=23)
    check_op("RMSNormalization", {"x": x, "s": s}, {"axis": axis, "epsilon": 1e-3}, opset=23, **tol(x))


def test_norms_of_an_empty_batch():
    # onnx.reference cannot reshape these; the result is simply empty
    x, ones = np.zeros((0, 4, 3), np.float32), np.ones(4, np.float32)
    cases = [("GroupNormalization", {"x": x, "s": ones, "b": ones}, {"num_groups": 2}, 21),
             ("LayerNormalization", {"x": x, "s": np.ones(3, np.float32)}, {}, 17),
             ("InstanceNormalization", {"x": x, "s": ones, "b": ones}, {}, 6),
             ("BatchNormalization", {"x": x, "s": ones, "b": ones, "m": ones, "v": ones}, {}, 15),
             ("RMSNormalization", {"x": x, "s": np.ones(3, np.float32)}, {}, 23)]
    for op, inputs, attrs, opset in cases:
        check_expected(op, inputs, attrs, opset, x)


# -- Lp / MVN / LRN -----------------------------------------------------------------------------------

def test_lp_norm():
    x = rand((3, 4, 5), seed=24)
    x[0, 0, :] = 0  # a zero norm gives zeros
    for axis in (0, 1, -1):
        check_op("LpNormalization", {"x": x}, {"axis": axis, "p": 2}, opset=22)
        check_op("LpNormalization", {"x": x.astype(np.float16)}, {"axis": axis}, opset=22, rtol=3e-3, atol=3e-3)
        # onnx.reference sums x (not |x|) for p=1
        check_ort("LpNormalization", {"x": x}, {"axis": axis, "p": 1}, opset=13)


def test_mvn():
    x = rand((2, 3, 4, 5), seed=25)
    for axes in (None, [0, 2, 3], [1], [2, 3], [-1]):
        check_op("MeanVarianceNormalization", {"x": x}, {} if axes is None else {"axes": axes}, opset=13,
                 rtol=1e-4, atol=1e-5)


def _lrn_by_definition(x, size, alpha=1e-4, beta=0.75, bias=1.0):
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    square_sum = np.zeros_like(x)
    for c in range(x.shape[1]):
        square_sum[:, c] = (x[:, max(0, c - lo):min(x.shape[1], c + hi + 1)] ** 2).sum(axis=1)
    return (x / (bias + alpha / size * square_sum) ** beta).astype(x.dtype)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
def test_lrn(size):
    # onnx.reference's LRN iterates over the batch dim instead of channels, and onnxruntime takes odd
    # sizes only: the oracle is the spec's formula
    x = rand((2, 7, 3, 3), seed=26)
    attrs = {"size": size, "alpha": 0.01, "beta": 0.6, "bias": 2.0}
    check_expected("LRN", {"x": x}, attrs, 13, _lrn_by_definition(x, **attrs))
    check_expected("LRN", {"x": x[:, :, 0]}, attrs, 13, _lrn_by_definition(x[:, :, 0], **attrs))
    check_expected("LRN", {"x": x}, {"size": size}, 13, _lrn_by_definition(x, size))
    if size % 2:
        check_ort("LRN", {"x": x}, attrs, opset=13)


# -- MatMul / Gemm / Einsum / Det ---------------------------------------------------------------------

MATMUL_SHAPES = [((2, 3), (3, 4)), ((3,), (2, 3, 4)), ((2, 3, 4), (4,)), ((4,), (4,)), ((2, 1, 3, 4), (5, 4, 2)),
                 ((1, 3), (3, 1)), ((0, 3), (3, 2)), ((2, 0), (0, 3))]


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "bfloat16", "int32", "int64", "uint32",
                                   "uint64"])
def test_matmul(dtype):
    for sa, sb in MATMUL_SHAPES:
        a, b = rand(sa, dtype, 0 if dtype.startswith("u") else -5, 5, seed=27), rand(sb, dtype, 0, 5, seed=28)
        check_op("MatMul", {"a": a, "b": b}, {}, opset=13, **tol(a))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int32", "int64", "uint32"])
def test_gemm(dtype):
    m, k, n = 3, 4, 5
    for ta in (0, 1):
        for tb in (0, 1):
            a = rand((k, m) if ta else (m, k), dtype, 0, 5, seed=29)
            b = rand((n, k) if tb else (k, n), dtype, 0, 5, seed=30)
            for c_shape in (None, (), (n,), (m, 1), (1, n), (m, n)):
                c = None if c_shape is None else rand(c_shape, dtype, 0, 5, seed=31)
                for alpha, beta in ((1.0, 1.0), (0.5, 2.0), (2.0, 0.0)):
                    if np.dtype(dtype).kind in "iu" and alpha != 1.0:
                        alpha = 2.0  # integral scaling, where truncation cannot differ
                    check_op("Gemm", {"a": a, "b": b, "c": c},
                             {"transA": ta, "transB": tb, "alpha": alpha, "beta": float(int(beta))},
                             opset=13, **tol(a))
    a, b, c = rand((m, k), dtype, 0, 5), rand((k, n), dtype, 0, 5), rand((m, n), dtype, 0, 5)
    check_op("Gemm", {"a": a, "b": b, "c": c}, {"broadcast": 1}, opset=6, **tol(a))
    check_op("Gemm", {"a": a, "b": b, "c": c}, {}, opset=9, **tol(a))


EINSUM = [
    ("ij,jk->ik", [(2, 3), (3, 4)]), ("ij,jk", [(2, 3), (3, 4)]), ("...ij,...jk->...ik", [(5, 2, 3), (1, 3, 4)]),
    ("i,i", [(4,)]), ("ii->i", [(3, 3)]), ("ii", [(3, 3)]), ("bij->bji", [(2, 3, 4)]), ("ij->", [(2, 3)]),
    ("Ab,bc->Ac", [(2, 3), (3, 4)]), (" ij , jk -> ik ", [(2, 3), (3, 4)]), ("ij,kl->ijkl", [(2, 2), (3, 1)]),
    ("bA,ab", [(2, 3), (3, 2)]), ("...j,j", [(2, 3, 4), (4,)]), ("i,j,k->ijk", [(2,), (3,), (1,)]),
    ("->", [()]), ("ij,ij->i", [(3, 4), (3, 4)]),
]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int32", "int64"])
def test_einsum(dtype):
    for eq, shapes in EINSUM:
        if eq == "i,i":
            shapes = shapes * 2
        inputs = {f"x{i}": rand(s, dtype, -3, 3, seed=32 + i) for i, s in enumerate(shapes)}
        check_op("Einsum", inputs, {"equation": eq}, opset=12, **tol(inputs["x0"]))


def test_det():
    for shape in ((2, 2), (3, 3), (2, 3, 4, 4), (1, 1), (0, 2, 2)):
        for dtype in ("float32", "float64"):
            x = rand(shape, dtype, seed=33)
            check_op("Det", {"x": x}, {}, opset=22, rtol=1e-4, atol=1e-5)
    check_op("Det", {"x": np.ones((3, 3), np.float32)}, {}, opset=22, atol=1e-6)  # singular
    x = rand((2, 3, 3), "float16", seed=34)  # numpy has no float16 det
    check_expected("Det", {"x": x}, {}, 22, np.linalg.det(x.astype(np.float32)).astype(np.float16), 1e-2, 1e-2)
