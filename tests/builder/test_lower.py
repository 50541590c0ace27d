"""Lowering: layer descriptions and the activation lifetimes fed to the memory planner."""
import numpy as np
from onnx import TensorProto, helper

import kiln
from kiln.builder.memory_plan import lifetimes
from kiln.passes.propagate import propagate


def _graph(nodes, out="y"):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          [helper.make_tensor("shape", TensorProto.INT64, [1], [32])])
    return kiln.parse(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_views_share_their_source_memory():
    # a = Exp(x); r = Reshape(a) is a view of a; b = Neg(r); y = Abs(b): a lives until b is computed.
    g = _graph([helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Reshape", ["a", "shape"], ["r"]),
                helper.make_node("Neg", ["r"], ["b"]), helper.make_node("Abs", ["b"], ["y"])])
    lts, unknown = lifetimes(g, propagate(g))
    assert not unknown
    assert sorted((t.start, t.end, t.size) for t in lts) == [(0, 2, 128), (2, 3, 128)]


def test_tensor_viewed_by_an_output_is_output_memory():
    g = _graph([helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Reshape", ["a", "shape"], ["y"])])
    lts, _ = lifetimes(g, propagate(g))
    assert lts == []


def test_layer_table_lists_kernels():
    g = _graph([helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])])
    table = kiln.build(g).report.layer_table()
    assert "kernel" in table.splitlines()[0]
    x = np.ones((4, 8), np.float32)
    assert kiln.build(g).create_execution_context().infer({"x": x})["y"].shape == (4, 8)


def test_concat_inputs_written_in_place_are_part_of_its_output():
    # a = Exp(x), b = Neg(x), c = Concat(a, b), y = Abs(c): with both inputs in place, c's memory is written
    # from step 0 on and a, b have none of their own.
    g = _graph([helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
                helper.make_node("Concat", ["a", "b"], ["c"], axis=0), helper.make_node("Abs", ["c"], ["y"])])
    plain, _ = lifetimes(g, propagate(g))
    assert sorted((t.start, t.end, t.size) for t in plain) == [(0, 2, 128), (1, 2, 128), (2, 3, 256)]
    next(n for n in g.nodes if n.op_type == "Concat").attrs["in_place"] = [0, 1]
    fused, _ = lifetimes(g, propagate(g))
    assert [(t.start, t.end, t.size) for t in fused] == [(0, 3, 256)]
