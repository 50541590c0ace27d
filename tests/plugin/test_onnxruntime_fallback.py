"""BuilderConfig(onnxruntime_fallback=True): a node nobody implements runs through onnxruntime on the host,
named in the build report; off by default, where every unknown op is listed at once."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import kiln
from kiln.errors import EngineFormatError, UnsupportedOpError


def model():
    """Inverse (com.microsoft: matrix inverse, which Kiln has no kernel for) between Kiln ops."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "eye"], ["a"], name="add"),
             helper.make_node("Inverse", ["a"], ["inv"], domain="com.microsoft", name="inverse"),
             helper.make_node("Mul", ["inv", "two"], ["y"], name="mul")]
    eye = helper.make_tensor("eye", TensorProto.FLOAT, [3, 3], np.eye(3, dtype=np.float32).ravel() * 4)
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 3])], [eye, two])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_off_by_default_lists_the_op():
    with pytest.raises(UnsupportedOpError, match="Inverse"):
        kiln.build(model())


def test_fallback_runs_the_node_through_onnxruntime(tmp_path):
    m = model()
    engine = kiln.build(m, onnxruntime_fallback=True,
                        profiles=[kiln.Profile.of(x=((1, 3, 3), (2, 3, 3), (4, 3, 3)))])
    layer = next(l for l in engine.report.layers if l.name == "inverse")
    assert layer.kernel == "onnxruntime[com.microsoft::Inverse]"
    assert any("inverse" in n and "onnxruntime" in n for n in engine.report.notes)
    x = np.random.default_rng(0).standard_normal((4, 3, 3)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = engine.create_execution_context().infer({"x": torch.from_numpy(x)})["y"]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    path = tmp_path / "e.engine"
    engine.save(path)
    again = kiln.Engine.load(path).create_execution_context().infer({"x": torch.from_numpy(x)})["y"]
    np.testing.assert_array_equal(again.numpy(), got.numpy())


def test_stored_node_is_validated():
    from kiln.engine.format import pack
    from kiln.engine.graph_json import encode_graph
    engine = kiln.build(model(), onnxruntime_fallback=True)
    node = next(n for n in engine.graph.nodes if n.op_type == "OnnxRuntimeNode")
    node.attrs["node"] = "not base64!"
    plan, weights = encode_graph(engine.graph)
    with pytest.raises(EngineFormatError, match="is not a serialized ONNX node"):
        kiln.Engine.deserialize(pack(engine.header, plan, weights))
