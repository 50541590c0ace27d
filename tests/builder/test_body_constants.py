"""Small integer constants of If/Loop bodies read both as Python values and as data get a host copy for the
Python-value readers (kiln/passes/body_constants.py), so that GPU host placement keeps it on the host."""
import numpy as np
from onnx import TensorProto as TP
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import kiln


def test_a_body_constant_read_as_axes_and_as_data_gets_a_host_copy():
    """silero-vad's STFT reads one int constant as Unsqueeze's axes and as Equal's data inside an If branch: the
    axes reader gets its own copy, which host placement keeps on the host (no device-to-host read per run)."""
    from kiln.engine.placement import host_constants

    def branch(name):
        nodes = [helper.make_node("Unsqueeze", ["v", f"k_{name}"], [f"u_{name}"]),
                 helper.make_node("Add", [f"u_{name}", f"k_{name}"], [f"y_{name}"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"y_{name}", TP.INT64, None)],
                                 [numpy_helper.from_array(np.array([1], np.int64), f"k_{name}")])
    g = helper.make_graph([helper.make_node("If", ["flag"], ["y"], then_branch=branch("a"), else_branch=branch("b"))],
                          "g", [helper.make_tensor_value_info("v", TP.INT64, [3]),
                                helper.make_tensor_value_info("flag", TP.BOOL, [])],
                          [helper.make_tensor_value_info("y", TP.INT64, [3, 1])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    engine = kiln.build(model)
    assert engine.report.fusions.get("split_body_shape_constants") == 2
    on_host = host_constants(engine.graph)
    for n in engine.graph.all_nodes():
        if n.op_type == "Unsqueeze":
            assert n.inputs[1].name.endswith("_host") and n.inputs[1].id in on_host
        if n.op_type == "Add":
            assert n.inputs[1].id not in on_host
    feed = {"v": np.array([4, 5, 6], np.int64), "flag": np.array(True)}
    np.testing.assert_array_equal(engine.create_execution_context().infer(feed)["y"],
                                  ReferenceEvaluator(model).run(None, feed)[0])
