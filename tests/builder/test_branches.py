"""If branches get the main graph's local fusions (kiln/passes/branches.py): the branch of a model whose work sits
in an If (silero-vad branches on its sample rate) builds to fused layers, and both branches still give what
onnx.reference gives, at every batch of the profile, NaN included, and after a save and load."""
import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import kiln


def _branch(name: str, scale: float):
    """Conv (with bias) -> Relu -> Mul by a constant -> Add of an outer value: a conv layer with a ReLU epilogue
    and one elementwise region."""
    rng = np.random.default_rng(len(name))
    w = rng.standard_normal((4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", f"w_{name}", f"b_{name}"], [f"c_{name}"], pads=[1, 1]),
             helper.make_node("Relu", [f"c_{name}"], [f"r_{name}"]),
             helper.make_node("Mul", [f"r_{name}", f"s_{name}"], [f"m_{name}"]),
             helper.make_node("Add", [f"m_{name}", "x4"], [f"y_{name}"])]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"y_{name}", TP.FLOAT, None)],
                             [numpy_helper.from_array(w, f"w_{name}"), numpy_helper.from_array(b, f"b_{name}"),
                              numpy_helper.from_array(np.array(scale, np.float32), f"s_{name}")])


def _model():
    nodes = [helper.make_node("Tile", ["x", "reps"], ["x4t"]),
             helper.make_node("Slice", ["x4t", "zero", "four", "one"], ["x4"]),
             helper.make_node("If", ["flag"], ["y"], then_branch=_branch("then", 2.0),
                              else_branch=_branch("else", -0.5))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, ["n", 3, 16]),
                                       helper.make_tensor_value_info("flag", TP.BOOL, [])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, ["n", 4, 16])],
                          [numpy_helper.from_array(np.array([1, 2, 1], np.int64), "reps"),
                           numpy_helper.from_array(np.array([0], np.int64), "zero"),
                           numpy_helper.from_array(np.array([4], np.int64), "four"),
                           numpy_helper.from_array(np.array([1], np.int64), "one")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def engine():
    return kiln.build(_model(), profiles=[kiln.Profile.of(x=((1, 3, 16), (2, 3, 16), (5, 3, 16)))])


def test_both_branches_are_fused(engine):
    notes = [n for n in engine.report.notes if "branch" in n]
    assert len(notes) == 2 and all("4 -> 2 nodes" in n for n in notes), engine.report.notes
    if_node = next(n for n in engine.graph.nodes if n.op_type == "If")
    for key in ("then_branch", "else_branch"):
        assert [(n.domain, n.op_type) for n in if_node.attrs[key].nodes] == [("kiln", "Conv"), ("kiln", "Elementwise")]
        assert if_node.attrs[key].nodes[0].attrs["epilogue"] == ["relu"]


@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("flag", [True, False])
def test_branches_match_the_reference(engine, batch, flag):
    x = np.random.default_rng(batch).standard_normal((batch, 3, 16)).astype(np.float32)
    x[0, 1, 3] = np.nan
    feed = {"x": x, "flag": np.array(flag)}
    want = ReferenceEvaluator(_model()).run(None, feed)[0]
    got = engine.create_execution_context().infer(feed)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.isnan(got).any() and (np.isnan(got) == np.isnan(want)).all()


def test_a_saved_engine_keeps_its_fused_branches(engine):
    loaded = kiln.Engine.deserialize(engine.serialize())
    feed = {"x": np.ones((2, 3, 16), np.float32), "flag": np.array(False)}
    np.testing.assert_array_equal(loaded.create_execution_context().infer(feed)["y"],
                                  engine.create_execution_context().infer(feed)["y"])



def test_a_pattern_reaching_out_of_the_branch_is_not_fused_across():
    """GELU's first half (x * 0.5) in the main graph, the rest (erf form) in the branch: the recognizer must not
    follow the outer value to its producer and fuse a main-graph node away (it did: the build failed)."""
    branch = helper.make_graph(
        [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
         helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["h", "a"], ["y_then"])],
        "then", [], [helper.make_tensor_value_info("y_then", TP.FLOAT, None)],
        [numpy_helper.from_array(np.array(np.sqrt(2), np.float32), "sqrt2"),
         numpy_helper.from_array(np.array(1, np.float32), "one")])
    other = helper.make_graph([helper.make_node("Neg", ["h"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", TP.FLOAT, None)])
    g = helper.make_graph([helper.make_node("Mul", ["x", "half"], ["h"]),
                           helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=other)], "g",
                          [helper.make_tensor_value_info("x", TP.FLOAT, [2, 5]),
                           helper.make_tensor_value_info("flag", TP.BOOL, [])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [2, 5])],
                          [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    engine = kiln.build(model)
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    for flag in (True, False):
        feed = {"x": x, "flag": np.array(flag)}
        np.testing.assert_allclose(engine.create_execution_context().infer(feed)["y"],
                                   ReferenceEvaluator(model).run(None, feed)[0], rtol=1e-5, atol=1e-6)
