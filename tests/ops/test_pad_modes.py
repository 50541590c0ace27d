"""Pad's reflect/edge/wrap modes against onnx.reference, on the shapes that take torch's one-call path (float, the
last 1-3 axes, pads within the axis) and on those that take the gather path (leading axes padded, pads longer than
reflect allows, integer tensors), with NaN and Inf carried through."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import kiln

CASES = [  # (shape, pads, dtype)
    ((1, 1, 640), [0, 0, 64, 0, 0, 64], np.float32),    # silero's STFT pad: the last axis of a rank-3 tensor
    ((2, 3, 5, 6), [0, 0, 2, 1, 0, 0, 1, 3], np.float32),  # two last axes of rank 4
    ((3, 4), [0, 2, 0, 3], np.float16),                 # last axis of rank 2
    ((3, 4), [1, 0, 1, 0], np.float32),                 # a leading axis: the gather path
    ((2, 3), [0, 4, 0, 4], np.float32),                 # pads longer than the axis: gather (reflect), torch refuses
    ((2, 5), [0, 2, 0, 1], np.int64),                   # integers: gather
    ((0, 3, 4), [0, 1, 1, 0, 2, 2], np.float32),        # an empty dim: gather (torch refuses it)
]


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
@pytest.mark.parametrize("shape,pads,dtype", CASES)
def test_pad_mode_matches_the_reference(mode, shape, pads, dtype):
    if mode == "reflect" and max(pads) >= min(shape[i % len(shape)] for i, p in enumerate(pads) if p):
        pytest.skip("reflect pads must be shorter than the axis (ONNX leaves longer ones undefined)")
    x = (np.random.default_rng(0).standard_normal(shape) * 10).astype(dtype)
    if x.dtype.kind == "f" and x.size:
        x.reshape(-1)[0], x.reshape(-1)[-1] = np.nan, np.inf
    t = TensorProto.INT64 if dtype == np.int64 else helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    g = helper.make_graph([helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)], "g",
                          [helper.make_tensor_value_info("x", t, list(shape))],
                          [helper.make_tensor_value_info("y", t, None)],
                          [numpy_helper.from_array(np.array(pads, np.int64), "pads")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = kiln.build(model, optimization_level=0).create_execution_context().infer({"x": x})["y"]
    np.testing.assert_array_equal(np.asarray(got), want)
