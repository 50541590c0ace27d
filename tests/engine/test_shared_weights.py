"""Saving never depends on how weights happen to be stored: tied, aliased and identical constants are
stored once, and loading hands every reader the same tensor."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import kiln
from kiln.engine.graph_json import decode_graph, encode_graph
from kiln.ir.graph import Graph, Node, Value
from kiln.ir.types import TensorType
from kiln.ir.dtype import DType


def _graph_with_consts(consts: dict[str, torch.Tensor]) -> Graph:
    g = Graph("g")
    x = Value("x", TensorType(DType.FLOAT, (4,)))
    g.add_input(x)
    out = x
    for name, t in consts.items():
        c = Value(name, TensorType(DType.FLOAT, tuple(t.shape)), const=t)
        g.constants[name] = c
        y = Value(f"{name}_out", TensorType(DType.FLOAT, (4,)))
        g.append(Node("Add", [out, c], [y], {}, name=f"add_{name}"))
        out = y
    g.outputs = [out]
    return g


def test_views_of_one_storage_encode_and_share_on_decode():
    base = torch.arange(8, dtype=torch.float32)
    g = _graph_with_consts({"a": base[:4], "b": base[4:], "c": base[:4].clone(), "d": base[:4]})
    plan, tensors = encode_graph(g)
    assert len(tensors) == 2  # a, c and d are one constant; b its own
    from safetensors.torch import save
    save(tensors)  # raised "Some tensors share memory" before
    back = decode_graph(plan, tensors)
    consts = back.constants
    assert consts["a"].const is consts["c"].const is consts["d"].const
    assert torch.equal(consts["b"].const, base[4:])


def _tied_model() -> onnx.ModelProto:
    """Tied embeddings (one initializer read by Gather and by a transposed MatMul), two equal LayerNorm
    scales, and an If whose branches read the same outer initializer."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((10, 6)).astype(np.float32)
    gamma = np.ones(6, np.float32) * 1.5
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(gamma, "g1"),
             numpy_helper.from_array(gamma.copy(), "g2"), numpy_helper.from_array(np.zeros(6, np.float32), "beta"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "shared")]

    def branch(name, op):
        out = helper.make_tensor_value_info(f"{name}_y", TP.FLOAT, None)
        return helper.make_graph([helper.make_node(op, ["h2", "shared"], [f"{name}_y"])], name, [], [out])

    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["h"]),
        helper.make_node("LayerNormalization", ["h", "g1", "beta"], ["h1"], axis=-1),
        helper.make_node("LayerNormalization", ["h1", "g2", "beta"], ["h2"], axis=-1),
        helper.make_node("If", ["flag"], ["h3"], then_branch=branch("then", "Add"), else_branch=branch("else", "Mul")),
        helper.make_node("Transpose", ["emb"], ["embT"], perm=[1, 0]),
        helper.make_node("MatMul", ["h3", "embT"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "tied",
                              [helper.make_tensor_value_info("ids", TP.INT64, [3]),
                               helper.make_tensor_value_info("flag", TP.BOOL, [])],
                              [helper.make_tensor_value_info("logits", TP.FLOAT, [3, 10])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)  # older onnxruntimes


@pytest.mark.parametrize("level", [0, 3])
def test_tied_and_identical_constants_save_load_identical(tmp_path, level):
    model = _tied_model()
    engine = kiln.build(model, kiln.BuilderConfig(optimization_level=level))
    path = tmp_path / "tied.engine"
    engine.save(path)
    loaded = kiln.Engine.load(path)
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for flag in (True, False):
        feed = {"ids": np.array([1, 4, 9], np.int64), "flag": np.array(flag)}
        want = sess.run(None, feed)[0]
        before = engine.create_execution_context().infer(feed)["logits"]
        after = loaded.create_execution_context().infer(feed)["logits"]
        np.testing.assert_array_equal(before, after)
        np.testing.assert_allclose(after, want, rtol=1e-5, atol=1e-5)
