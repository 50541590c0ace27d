"""Shape, indexing and detection ops through Kiln against onnx.reference, beyond the node suite: more
dtypes (unsigned, bool, bfloat16, float8), old-opset attribute forms, clamping and negative-step slices,
every pad mode, scatter reductions, GatherND batch dims, Unique's four outputs and NMS variants.

Each row is (op, inputs, attrs, opset, outputs, constant inputs); inputs listed as constants become
initializers, which also exercises the constant-folding path of the same kernels."""
from __future__ import annotations

import functools
import os

import ml_dtypes
import numpy as np
import pytest
import torch
from onnx.numpy_helper import from_array
from oracle import check_op as _check_op
from oracle import one_node_model

import kiln

from kiln.ops import KernelContext, default_registry

# KILN_TEST_DEVICE=cuda runs the same rows on a GPU.
DEVICE = os.environ.get("KILN_TEST_DEVICE", "cpu")
check_op = functools.partial(_check_op, device=DEVICE)

I64_MAX, I64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def rnd(shape, dtype="float32", lo=-5, hi=5, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in ("bfloat16", "float8_e4m3fn"):
        return rng.uniform(lo, hi, shape).astype(getattr(ml_dtypes, dtype))
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(lo, info.min), min(hi, info.max), size=shape, endpoint=True, dtype=dtype)
    return rng.uniform(lo, hi, shape).astype(dtype)


def i64(*v) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def row(op, inputs, attrs=None, opset=21, n=1, const=(), id=None, **tol):
    return pytest.param(op, inputs, attrs or {}, opset, n, const, tol, id=id or op)


MOVE_DTYPES = ["uint16", "uint32", "uint64", "bool", "bfloat16", "float8_e4m3fn", "float16", "int8"]
BOXES = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, -0.1, 1, 0.9], [0, 10, 1, 11], [1, 10.1, 0, 11.1],
                   [0, 100, 1, 101], [0.5, 0.5, 0.5, 0.5]]], dtype=np.float32)
SCORES = np.array([[[0.9, 0.75, 0.6, 0.95, 0.5, 0.3, 0.99], [0.1, 0.2, 0.3, 0.3, 0.9, 0.95, 0.5]]], dtype=np.float32)

ROWS = [
    # -- Shape / Size / Reshape / Flatten / Squeeze / Unsqueeze ---------------------------------------
    row("Shape", {"x": rnd((2, 3, 4))}, opset=13),
    *[row("Shape", {"x": rnd((2, 3, 4, 5))}, a, id=f"Shape-{a}") for a in
      ({"start": -2}, {"end": -3}, {"start": 1, "end": 10}, {"start": 3, "end": 1}, {"start": -10, "end": 2})],
    row("Size", {"x": rnd((2, 0, 4))}),
    row("Reshape", {"x": rnd((2, 3, 4)), "s": i64(0, -1)}, const=("s",)),
    row("Reshape", {"x": rnd((2, 3, 4), "uint64"), "s": i64(4, 0, -1)}, id="Reshape-u64"),
    row("Reshape", {"x": rnd((0, 3)), "s": i64(3, 0)}, {"allowzero": 1}, id="Reshape-allowzero"),
    row("Reshape", {"x": rnd((0, 3)), "s": i64(-1, 3)}, id="Reshape-empty"),
    *[row("Flatten", {"x": rnd((2, 3, 4), "uint32")}, {"axis": a}, id=f"Flatten-{a}") for a in (0, 2, -1, 3)],
    row("Squeeze", {"x": rnd((1, 3, 1, 2))}, {"axes": [0, -2]}, opset=11, id="Squeeze-attr"),
    row("Squeeze", {"x": rnd((1, 3, 1, 2), "bool"), "a": i64(2)}, opset=13),
    row("Squeeze", {"x": rnd((1, 3, 1, 1))}, opset=13, id="Squeeze-all"),
    row("Unsqueeze", {"x": rnd((3, 2))}, {"axes": [0, 3]}, opset=11, id="Unsqueeze-attr"),
    row("Unsqueeze", {"x": rnd((3, 2), "float8_e4m3fn"), "a": i64(-1, 0, 2)}, opset=13),
    row("Unsqueeze", {"x": rnd((), "int8"), "a": i64(0)}, opset=21, id="Unsqueeze-scalar"),
    # -- Transpose / Expand / Tile / Concat / Split -------------------------------------------------
    *[row("Transpose", {"x": rnd((2, 3, 4), d)}, {"perm": [1, 2, 0]}, id=f"Transpose-{d}") for d in MOVE_DTYPES],
    row("Transpose", {"x": rnd((2, 3, 4))}, id="Transpose-default"),
    row("Expand", {"x": rnd((3, 1), "uint16"), "s": i64(2, 1, 4)}),
    row("Expand", {"x": rnd((2, 3)), "s": i64(3)}, id="Expand-smaller-rank"),
    row("Expand", {"x": rnd((2, 1)), "s": i64(2, 1, 0)}, id="Expand-zero"),
    *[row("Tile", {"x": rnd((2, 3), d), "r": i64(2, 3)}, id=f"Tile-{d}") for d in ("bool", "uint64", "bfloat16")],
    row("Tile", {"x": rnd((2, 3)), "r": i64(0, 2)}, id="Tile-zero"),
    row("Concat", {"a": rnd((2, 3), "uint32"), "b": rnd((2, 1), "uint32", seed=1), "c": rnd((2, 0), "uint32")},
        {"axis": -1}),
    row("Concat", {"a": rnd((2, 3), "float8_e4m3fn"), "b": rnd((1, 3), "float8_e4m3fn")}, {"axis": 0}, id="Concat-f8"),
    row("Split", {"x": rnd((6, 2))}, {"split": [1, 5]}, opset=11, n=2, id="Split-attr"),
    row("Split", {"x": rnd((2, 7), "uint64"), "s": i64(3, 0, 4)}, {"axis": 1}, opset=13, n=3),
    row("Split", {"x": rnd((7,))}, {"num_outputs": 3}, opset=18, n=3, id="Split-uneven"),
    row("Split", {"x": rnd((2, 6))}, {"axis": -1}, opset=13, n=3, id="Split-equal"),
    # -- Slice ---------------------------------------------------------------------------------------
    row("Slice", {"x": rnd((5, 6))}, {"starts": [1, -4], "ends": [100, -1], "axes": [0, 1]}, opset=9, id="Slice-attr"),
    row("Slice", {"x": rnd((5, 6), "uint16"), "s": i64(-1, 5), "e": i64(I64_MIN, 0), "a": i64(0, -1),
                  "st": i64(-2, -3)}, opset=13, const=("s", "e", "a", "st"), id="Slice-neg-steps"),
    row("Slice", {"x": rnd((5, 6)), "s": i64(10, 0), "e": i64(-10, I64_MAX), "a": i64(0, 1), "st": i64(-1, 4)},
        opset=13, id="Slice-clamp"),
    row("Slice", {"x": rnd((5, 6)), "s": i64(2), "e": i64(2)}, opset=13, id="Slice-empty"),
    row("Slice", {"x": rnd((5, 6)), "s": i64(1), "e": i64(3), "a": i64(1)}, opset=10, id="Slice-10"),
    row("Slice", {"x": rnd((4, 5), "bool"), "s": i64(3), "e": i64(-100), "a": i64(0), "st": i64(-1)}, opset=13,
        id="Slice-reverse"),
    # -- Pad / CenterCropPad -------------------------------------------------------------------------
    *[row("Pad", {"x": rnd((3, 4)), "p": i64(2, 3, 1, 4)}, {"mode": m}, opset=19, id=f"Pad-{m}")
      for m in ("constant", "reflect", "edge", "wrap")],
    row("Pad", {"x": rnd((3, 4), "int32"), "p": i64(1, 2, 2, 1), "v": np.array(7, np.int32)}, opset=13, id="Pad-value"),
    row("Pad", {"x": rnd((2, 3, 4), "uint16"), "p": i64(1, 2, 0, 3), "v": np.array(9, np.uint16), "a": i64(-1, 0)},
        opset=18, id="Pad-axes"),
    row("Pad", {"x": rnd((3, 4), "float8_e4m3fn"), "p": i64(1, 1, 1, 1)}, opset=19, id="Pad-f8"),
    row("Pad", {"x": rnd((3, 4))}, {"pads": [1, 0, 0, 2], "value": 1.5}, opset=2, id="Pad-attr"),
    row("Pad", {"x": rnd((3, 2))}, {"pads": [0, 3, 0, 4], "mode": "reflect"}, opset=2, id="Pad-attr-reflect"),
    row("CenterCropPad", {"x": rnd((5, 4, 3), "int64"), "s": i64(2, 7, 3)}),
    row("CenterCropPad", {"x": rnd((5, 4, 3)), "s": i64(8, 1)}, {"axes": [-1, 0]}, id="CenterCropPad-axes"),
    # -- Identity / Dropout --------------------------------------------------------------------------
    row("Identity", {"x": rnd((2, 3), "uint64")}),
    row("Dropout", {"x": rnd((2, 3)), "r": np.array(0.3, np.float32), "t": np.array(False)}, opset=13, n=2),
    row("Dropout", {"x": rnd((2, 3)), "r": np.array(0.0, np.float32), "t": np.array(True)}, opset=13, n=2,
        id="Dropout-train-zero"),
    row("Dropout", {"x": rnd((2, 3), "float16")}, {"ratio": 0.2}, opset=10, n=2, id="Dropout-10"),
    row("Dropout", {"x": rnd((2, 3))}, opset=7, id="Dropout-7"),
    # -- ConstantOfShape / EyeLike / Range / Trilu ---------------------------------------------------
    row("ConstantOfShape", {"s": i64(2, 3)}),
    row("ConstantOfShape", {"s": i64(2, 0)}, {"value": from_array(np.array([5], np.int32))}, id="ConstantOfShape-int"),
    row("ConstantOfShape", {"s": i64(3, 2)}, {"value": from_array(np.array([7], np.uint64))}, const=("s",),
        id="ConstantOfShape-u64"),
    *[row("EyeLike", {"x": rnd((3, 5), "int32")}, a, id=f"EyeLike-{a}") for a in
      ({}, {"k": 2}, {"k": -1, "dtype": 11}, {"k": 7, "dtype": 9}, {"dtype": 4})],
    *[row("Range", {"a": np.array(s, d), "b": np.array(e, d), "c": np.array(st, d)}, id=f"Range-{d}-{s}-{e}-{st}")
      for d, s, e, st in [("int64", 3, 20, 4), ("int32", 10, -7, -3), ("int16", 2, 2, 1), ("float32", 0.5, 3.3, 0.4),
                          ("float64", 1.0, -2.0, -0.3), ("float32", 1.0, 5.0, -1.0)]],
    *[row("Trilu", {"x": rnd((2, 4, 5), d), "k": np.array(k, np.int64)}, {"upper": u}, id=f"Trilu-{d}-{k}-{u}")
      for d, k, u in [("float32", 1, 1), ("uint64", -2, 0), ("bool", 0, 1), ("int8", 9, 0), ("float16", -9, 1)]],
    row("Trilu", {"x": rnd((3, 3))}, {"upper": 0}, id="Trilu-no-k"),
    # -- DepthToSpace / SpaceToDepth -----------------------------------------------------------------
    *[row("DepthToSpace", {"x": rnd((2, 8, 2, 3), d)}, {"blocksize": 2, "mode": m}, id=f"DepthToSpace-{m}-{d}")
      for m in ("DCR", "CRD") for d in ("float32", "uint32")],
    row("SpaceToDepth", {"x": rnd((2, 3, 4, 6), "int16")}, {"blocksize": 2}),
    row("SpaceToDepth", {"x": rnd((1, 2, 6, 3))}, {"blocksize": 3, "mode": "CRD"}, opset=28, id="SpaceToDepth-CRD"),
    # -- Gather family -------------------------------------------------------------------------------
    *[row("Gather", {"x": rnd((4, 5), d), "i": np.array([[0, -1], [3, 2]], np.int64)}, {"axis": 0}, id=f"Gather-{d}")
      for d in MOVE_DTYPES],
    row("Gather", {"x": rnd((4, 5, 2)), "i": np.array(-2, np.int32)}, {"axis": 1}, id="Gather-scalar-idx"),
    row("Gather", {"x": rnd((4, 5)), "i": np.zeros((0, 2), np.int64)}, {"axis": -1}, id="Gather-empty"),
    row("GatherElements", {"x": rnd((2, 4), "uint16"), "i": np.array([[0, -1, 2], [1, 1, -3]], np.int64)},
        {"axis": 1}),
    row("GatherND", {"x": rnd((3, 4, 5)), "i": np.array([[1, -1], [2, 0]], np.int64)}),
    row("GatherND", {"x": rnd((3, 4, 5), "uint64"), "i": np.array([[[1], [0]], [[2], [1]], [[0], [3]]])},
        {"batch_dims": 1}, id="GatherND-b1"),
    row("GatherND", {"x": rnd((2, 3, 4, 5)), "i": np.array([[[2, 1], [0, 4]], [[1, 3], [2, 2]]])[:, None]
                     .repeat(3, 1)}, {"batch_dims": 2}, id="GatherND-b2"),
    row("GatherND", {"x": rnd((2, 3)), "i": np.array([[[1, 2]], [[0, 0]]])}, id="GatherND-full"),
    # -- Scatter family ------------------------------------------------------------------------------
    # Duplicate indices only with a reduction: without one their order is undefined (and differs on GPUs).
    *[row("ScatterElements", {"x": rnd((3, 4), d), "i": np.array([[1, 0, -1], [1, 3 if r == "none" else 1, 2]]),
                              "u": rnd((2, 3), d, seed=1)}, {"axis": 1, "reduction": r},
          opset=18, id=f"ScatterElements-{r}-{d}", rtol=1e-2)
      for r in ("none", "add", "mul", "max", "min") for d in ("float32", "int32", "uint16", "float16")],
    row("ScatterElements", {"x": rnd((3, 4), "bool"), "i": np.array([[1, 0, 0]], np.int64), "u": rnd((1, 3), "bool")},
        {"axis": 0, "reduction": "max"}, opset=18, id="ScatterElements-bool"),
    *[row("ScatterND", {"x": rnd((4, 3, 2), d), "i": np.array([[[1], [3]], [[-4], [1]]], np.int64),
                        "u": rnd((2, 2, 3, 2), d, seed=1)}, {"reduction": r}, opset=18, id=f"ScatterND-{r}-{d}",
          rtol=1e-2, atol=0.05)
      for r in ("add", "mul", "max", "min") for d in ("float32", "int64", "bfloat16")],
    row("ScatterND", {"x": rnd((4, 3), "uint32"), "i": np.array([[0, 1], [3, 2]], np.int64), "u": rnd((2,), "uint32")},
        opset=13, id="ScatterND-elements"),
    row("ScatterND", {"x": rnd((4, 3), "float8_e4m3fn"), "i": np.array([[2]], np.int64),
                      "u": rnd((1, 3), "float8_e4m3fn")}, opset=13, id="ScatterND-f8"),
    row("TensorScatter", {"c": rnd((2, 3, 6, 4)), "u": rnd((2, 3, 2, 4), seed=1), "w": i64(1, 4)}, opset=24),
    row("TensorScatter", {"c": rnd((2, 6, 4), "float16"), "u": rnd((2, 3, 4), "float16", seed=1), "w": i64(5, 2)},
        {"mode": "circular", "axis": 1}, opset=24, id="TensorScatter-circular"),
    row("TensorScatter", {"c": rnd((2, 5, 3)), "u": rnd((2, 5, 1), seed=1)}, {"axis": -1}, opset=24,
        id="TensorScatter-no-write-indices"),
    # -- Compress / NonZero / OneHot / ReverseSequence -----------------------------------------------
    row("Compress", {"x": rnd((3, 4), "uint64"), "c": np.array([True, False, True])}, {"axis": -1}),
    row("Compress", {"x": rnd((3, 4)), "c": np.array([False, True, True, False, True])}, id="Compress-flat"),
    *[row("NonZero", {"x": rnd((3, 4), d, lo=0, hi=2)}, id=f"NonZero-{d}")
      for d in ("float32", "int8", "uint16", "bool", "float16")],
    row("OneHot", {"i": np.array([[1, -1], [7, -8]], np.int64), "d": np.array(5, np.int64),
                   "v": np.array([0, 3], np.int32)}, {"axis": 1}),
    row("OneHot", {"i": np.array([0.0, 2.0, -1.0], np.float32), "d": np.array(3.0, np.float32),
                   "v": np.array([2.5, -1.0], np.float16)}, id="OneHot-float"),
    row("OneHot", {"i": np.array([1, 2], np.uint8), "d": np.array(3, np.int32), "v": np.array([4, 9], np.uint64)},
        {"axis": 0}, id="OneHot-u64"),
    row("ReverseSequence", {"x": rnd((5, 3, 2), "uint16"), "l": i64(5, 1, 3)}),
    row("ReverseSequence", {"x": rnd((3, 5)), "l": i64(2, 0, 5)}, {"batch_axis": 0, "time_axis": 1},
        id="ReverseSequence-batch-first"),
    # -- Unique --------------------------------------------------------------------------------------
    *[row("Unique", {"x": np.array([[3, 1, 3], [0, 2, 1], [3, 1, 3]], d)}, a, n=4, id=f"Unique-{d}-{a}")
      for d in ("int64", "float32", "uint16", "int8") for a in ({}, {"axis": 0}, {"axis": -1, "sorted": 0})],
    row("Unique", {"x": np.array([2, 1, 1, 3, 4, 3, 0], np.float32)}, {"sorted": 0}, n=4, id="Unique-unsorted"),
    row("Unique", {"x": np.array([2 ** 63 + 5, 3, 2 ** 64 - 1, 3], np.uint64)}, n=4, id="Unique-u64-big"),
    row("Unique", {"x": np.array([True, False, True])}, n=4, id="Unique-bool"),
    # -- NonMaxSuppression ---------------------------------------------------------------------------
    row("NonMaxSuppression", {"b": BOXES, "s": SCORES, "m": i64(3), "t": np.array([0.5], np.float32)}),
    row("NonMaxSuppression", {"b": BOXES, "s": SCORES, "m": i64(10), "t": np.array([0.0], np.float32),
                              "st": np.array([0.35], np.float32)}, id="NMS-score-threshold"),
    row("NonMaxSuppression", {"b": np.abs(BOXES) + 1, "s": SCORES, "m": i64(2), "t": np.array([0.2], np.float32)},
        {"center_point_box": 1}, id="NMS-center"),
]


@pytest.mark.parametrize("op,inputs,attrs,opset,n,const,tol", ROWS)
def test_op(op, inputs, attrs, opset, n, const, tol):
    check_op(op, inputs, attrs, n_outputs=n, opset=opset, const_inputs=const, **tol)


def run_kiln(op, inputs, attrs=None, opset=21, n=1):
    model = one_node_model(op, inputs, attrs or {}, n, opset)
    got = kiln.interpret(kiln.parse(model), {k: v for k, v in inputs.items() if v is not None}, device=DEVICE)
    return [_numpy(got[f"out{i}"]) for i in range(n)]


def _numpy(x):
    return x.cpu().numpy() if hasattr(x, "cpu") else x


def _crop_then_pad(x, pads, mode):
    """numpy's view of ONNX Pad with negative pads: crop first, then pad what is left."""
    r = x.ndim
    begins, ends = pads[:r], pads[r:]
    x = x[tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(begins, ends)))]
    width = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    return np.pad(x, width, mode={"edge": "edge", "wrap": "wrap", "reflect": "reflect"}.get(mode, "constant"))


# Rows the reference evaluator cannot run (or gets wrong): checked against the ONNX spec directly.
SPEC_ROWS = [
    pytest.param(lambda m=m: run_kiln("Pad", {"x": rnd((2, 3, 4)), "p": i64(0, -1, 2, 0, 1, -2)}, {"mode": m}, 19)[0],
                 lambda m=m: _crop_then_pad(rnd((2, 3, 4)), [0, -1, 2, 0, 1, -2], m), id=f"Pad-crop-{m}")
    for m in ("constant", "reflect", "edge", "wrap")
] + [
    # Shape clamps end = -5 + rank to 0 (onnx.reference counts it from the end twice).
    pytest.param(lambda: run_kiln("Shape", {"x": rnd((2, 3, 4, 5))}, {"end": -5})[0], lambda: i64(), id="Shape-clamp"),
    # Reshape before opset 5 takes the shape as an attribute.
    pytest.param(lambda: run_kiln("Reshape", {"x": rnd((2, 6))}, {"shape": [3, -1]}, opset=4)[0],
                 lambda: rnd((2, 6)).reshape(3, 4), id="Reshape-attr"),
    # Scatter (deprecated) is ScatterElements without reduction.
    pytest.param(lambda: run_kiln("Scatter", {"x": rnd((3, 4)), "i": np.array([[1, 0], [2, -1]], np.int64),
                                              "u": rnd((2, 2), seed=1)}, {"axis": 1}, opset=10)[0],
                 lambda: _put_along(rnd((3, 4)), np.array([[1, 0], [2, 3]]), rnd((2, 2), seed=1)), id="Scatter"),
    # OneHot casts non-integer indices to int64 (truncation) before use.
    pytest.param(lambda: run_kiln("OneHot", {"i": np.array([2.7, -0.5], np.float32), "d": np.array(3, np.int64),
                                             "v": np.array([0, 1], np.int8)})[0],
                 lambda: np.array([[0, 0, 1], [1, 0, 0]], np.int8), id="OneHot-truncates"),
    # Unique in order of first occurrence, on a 2-D input (flattened).
    pytest.param(lambda: run_kiln("Unique", {"x": np.array([[3, 1, 3], [0, 2, 1]], np.int32)}, {"sorted": 0}, n=4),
                 lambda: [np.array([3, 1, 0, 2], np.int32), i64(0, 1, 3, 4), i64(0, 1, 0, 2, 3, 1), i64(2, 2, 1, 1)],
                 id="Unique-unsorted-2d"),
    # Backward slices clamp start to [0, dim-1] and end to [-1, dim-1] after adding dim (numpy's slicing,
    # which the reference uses, gives an empty result for a start before the first element).
    pytest.param(lambda: run_kiln("Slice", {"x": np.arange(4, dtype=np.float32), "s": i64(-6), "e": i64(-7),
                                            "a": i64(0), "st": i64(-2)}, opset=13)[0],
                 lambda: np.array([0], np.float32), id="Slice-backward-clamp"),
    # max_output_boxes_per_class defaults to 0: nothing is selected.
    pytest.param(lambda: run_kiln("NonMaxSuppression", {"b": BOXES, "s": SCORES})[0],
                 lambda: np.zeros((0, 3), np.int64), id="NMS-no-limit"),
]


def _put_along(x, idx, upd):
    """Scatter along axis 1 for an index block covering the first rows of ``x``."""
    x = x.copy()
    rows = np.arange(idx.shape[0])[:, None]
    x[rows, idx] = upd
    return x


@pytest.mark.parametrize("got,expected", SPEC_ROWS)
def test_spec(got, expected):
    g, e = got(), expected()
    for g, e in zip(g, e) if isinstance(e, list) else [(g, e)]:
        assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, g.shape, e.dtype, e.shape)
        np.testing.assert_array_equal(g, e)


def test_random_slices():
    rng = np.random.default_rng(1)
    for _ in range(40):
        shape = tuple(int(d) for d in rng.integers(0, 5, rng.integers(1, 4)))
        k = int(rng.integers(1, len(shape) + 1))
        axes = rng.permutation(len(shape))[:k] - (len(shape) if rng.random() < .5 else 0)
        starts, ends = rng.integers(-7, 7, k), rng.integers(-7, 7, k)
        steps = rng.choice([-3, -2, -1, 1, 2, 3], k)
        # Skip backward slices starting before the first element: the reference's numpy slicing differs there.
        starts = np.where((steps < 0) & (starts + np.array(shape)[axes] < 0), -1, starts)
        check_op("Slice", {"x": rnd(shape), "s": starts.astype(np.int64), "e": ends.astype(np.int64),
                           "a": axes.astype(np.int64), "st": steps.astype(np.int64)}, opset=13)


def test_random_pads():
    rng = np.random.default_rng(2)
    for mode in ("constant", "reflect", "edge", "wrap"):
        for _ in range(8):
            shape = tuple(int(d) for d in rng.integers(1, 5, rng.integers(1, 4)))
            most = [d - 1 if mode == "reflect" else (d if mode == "wrap" else 4) for d in shape]
            pads = np.array([rng.integers(0, m + 1) for m in most * 2], np.int64)
            check_op("Pad", {"x": rnd(shape, "int32"), "p": pads}, {"mode": mode}, opset=19)


def test_random_gather_nd():
    rng = np.random.default_rng(3)
    for _ in range(30):
        b = int(rng.integers(0, 3))
        dshape = tuple(int(d) for d in rng.integers(1, 4, b + rng.integers(1, 4)))
        k = int(rng.integers(1, len(dshape) - b + 1))
        ishape = dshape[:b] + tuple(int(d) for d in rng.integers(1, 3, rng.integers(0, 2)))
        idx = np.stack([rng.integers(-dshape[b + j], dshape[b + j], ishape) for j in range(k)], -1)
        check_op("GatherND", {"x": rnd(dshape), "i": idx.astype(np.int64)}, {"batch_dims": b})


def test_random_nms():
    """Random boxes in both formats, with tied scores (ties keep the lower box index first)."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        n, c, b = int(rng.integers(1, 30)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
        corner = rng.uniform(0, 10, (b, n, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(0.5, 4, (b, n, 2))], -1).astype(np.float32)
        scores = rng.random((b, c, n)).astype(np.float32)
        scores[..., ::3] = 0.5
        check_op("NonMaxSuppression", {"b": boxes, "s": scores, "m": i64(int(rng.integers(1, 10))),
                                       "t": np.array([rng.uniform(0, .7)], np.float32),
                                       "st": np.array([rng.uniform(0, .5)], np.float32)},
                 {"center_point_box": int(rng.integers(0, 2))})


def test_nms_many_boxes():
    """Enough boxes for several decision blocks, with long overlap chains crossing block borders."""
    rng = np.random.default_rng(0)
    n = 300
    y = rng.uniform(0, 20, (1, n, 1)).astype(np.float32)
    x = rng.uniform(0, 20, (1, n, 1)).astype(np.float32)
    boxes = np.concatenate([y, x, y + 3, x + 3], -1)
    scores = rng.random((1, 3, n)).astype(np.float32)
    check_op("NonMaxSuppression", {"b": boxes, "s": scores, "m": i64(200), "t": np.array([0.3], np.float32),
                                   "st": np.array([0.1], np.float32)})


def test_dropout_training_is_refused():
    from kiln.errors import KilnError
    with pytest.raises(KilnError, match="random"):
        check_op("Dropout", {"x": rnd((2, 3)), "r": np.array(0.5, np.float32), "t": np.array(True)}, opset=13)


# Static types come from running kernels on the meta device with shape-like inputs real.
def _m(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


META_CASES = [
    ("Gather", [_m(4, 5), torch.tensor([[0, -1]])], {"axis": 1}, (4, 1, 2)),
    ("GatherND", [_m(3, 4, 5), torch.tensor([[1, 2]])], {}, (1, 5)),
    ("ScatterND", [_m(4, 3), torch.tensor([[1]]), _m(1, 3)], {}, (4, 3)),
    ("Compress", [_m(3, 4), torch.tensor([True, False, True])], {"axis": 1}, (3, 2)),
    ("Pad", [_m(3, 4), torch.tensor([1, 0, 2, -1]), torch.tensor(0.0)], {"mode": "reflect"}, (6, 3)),
    ("Slice", [_m(5, 6), torch.tensor([4]), torch.tensor([0]), torch.tensor([1]), torch.tensor([-2])], {}, (5, 2)),
    ("TensorScatter", [_m(2, 6, 4), _m(2, 2, 4), torch.tensor([1, 2])], {"axis": 1}, (2, 6, 4)),
    ("ReverseSequence", [_m(5, 3), torch.tensor([1, 2, 3])], {}, (5, 3)),
    ("OneHot", [_m(2, 3, dtype=torch.int64), torch.tensor(4), torch.tensor([0.0, 1.0])], {}, (2, 3, 4)),
    ("Trilu", [_m(3, 4), torch.tensor(1)], {}, (3, 4)),
    ("DepthToSpace", [_m(1, 8, 2, 2)], {"blocksize": 2}, (1, 2, 4, 4)),
    ("Expand", [_m(3, 1), torch.tensor([2, 1, 5])], {}, (2, 3, 5)),
    ("CenterCropPad", [_m(5, 4), torch.tensor([2, 7])], {}, (2, 7)),
]


@pytest.mark.parametrize("op,args,attrs,shape", META_CASES, ids=[c[0] for c in META_CASES])
def test_meta_shapes(op, args, attrs, shape):
    """Data tensors on ``meta``, small parameter tensors real on the CPU, as type propagation runs them."""
    ctx = KernelContext(opset=21, device=torch.device("meta"))
    out = default_registry().get("", op).kernel(ctx, args, attrs)
    assert out.device.type == "meta" and tuple(out.shape) == shape
