"""The short way for inputs like the last call's (ExecutionContext._prepare_repeat) must check as much as the
long way, and what a run returns belongs to the caller."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as T
from onnx import helper as h

import kiln
from kiln.errors import InputError, ShapeError


def _model():
    g = h.make_graph([h.make_node("Shape", ["x"], ["s"]), h.make_node("Relu", ["x"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["n", 3])],
                     [h.make_tensor_value_info("s", T.INT64, [2]), h.make_tensor_value_info("y", T.FLOAT, ["n", 3])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def context():
    engine = kiln.build(_model(), kiln.BuilderConfig(device="cpu", profiles=[kiln.Profile.of(x=((1, 3), (2, 3), (4, 3)))]))
    return engine.create_execution_context()


def test_repeat_calls_see_new_values_and_shapes(context):
    x = np.full((2, 3), -1.0, np.float32)
    assert (context.infer({"x": x})["y"] == 0).all()
    x[...] = 2.0  # same array object, new values: the run must read them
    assert (context.infer({"x": x})["y"] == 2).all()
    got = context.infer({"x": np.ones((4, 3), np.float32)})
    assert got["y"].shape == (4, 3) and list(got["s"]) == [4, 3]


def test_repeat_signature_still_checks_dtype_shape_and_profile(context):
    context.infer({"x": np.ones((2, 3), np.float32)})
    with pytest.raises(InputError, match="float"):
        context.infer({"x": np.ones((2, 3), np.float64)})
    with pytest.raises(ShapeError):
        context.infer({"x": np.ones((5, 3), np.float32)})  # outside the profile
    with pytest.raises(InputError, match="unknown input"):
        context.infer({"x": np.ones((2, 3), np.float32), "z": np.ones(1, np.float32)})
    assert context.infer({"x": np.ones((2, 3), np.float32)})["y"].shape == (2, 3)


def test_torch_inputs_take_the_same_checks(context):
    y = context.infer({"x": torch.ones(2, 3)})["y"]
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3)
    with pytest.raises(InputError):
        context.infer({"x": torch.ones(2, 3, dtype=torch.float64)})


def test_a_returned_constant_is_the_callers_copy(context):
    x = np.ones((2, 3), np.float32)
    first = context.infer({"x": x})["s"]
    first[0] = 99  # the caller writes into its result
    assert list(context.infer({"x": x})["s"]) == [2, 3]
