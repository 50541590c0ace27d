import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture(scope="session")
def small_model():
    """Conv + BN-free residual block with a dynamic batch: x[N,4,8,8] -> y[N,8,8,8], z = mean."""
    rng = np.random.default_rng(1)
    W = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    B = rng.standard_normal(8).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"]),
             helper.make_node("ReduceMean", ["y"], ["z"], axes=[1, 2, 3], keepdims=0)]
    g = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N"])],
                          [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
