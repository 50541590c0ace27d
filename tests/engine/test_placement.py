"""Host placement for GPU engines (a pure function of the graph, tested without a GPU): small float
constants that kernels read as Python values (Resize's scales, a divisor of a size computed from Shape) stay
on the host so CUDA graph capture never synchronizes on them; those read as data by device layers do not."""
import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import kiln
from kiln.engine.placement import host_constants, plan_placement


def _graph():
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "hw_idx"),
             numpy_helper.from_array(np.array([0, 0], np.int64), "zeros2")]
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Add", ["up", "half"], ["shifted"]),                       # 0.5 is data
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "hw_idx"], ["hw"]),
             helper.make_node("Cast", ["hw"], ["hw_f"], to=TP.FLOAT),
             helper.make_node("Div", ["hw_f", "two"], ["half_hw_f"]),                    # 2.0 is shape math
             helper.make_node("Cast", ["half_hw_f"], ["half_hw"], to=TP.INT64),
             helper.make_node("Concat", ["zeros2", "half_hw"], ["sizes"], axis=0),
             helper.make_node("Shape", ["shifted"], ["s2"]),
             helper.make_node("Slice", ["s2", "zeros2", "hw_idx"], ["nc"]),
             helper.make_node("Concat", ["nc", "half_hw"], ["sizes2"], axis=0),
             helper.make_node("Resize", ["shifted", "", "", "sizes2"], ["y"], mode="nearest")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)], inits)
    return kiln.parse(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_float_constants_read_as_values_live_on_the_host():
    graph = _graph()
    names = {graph.constants[k].id: k for k in graph.constants}
    on_host = {names[i] for i in host_constants(graph)}
    assert {"scales", "two", "hw_idx", "zeros2"} <= on_host
    assert "half" not in on_host  # read as data by a device Add: stays on the device


def test_shape_arithmetic_through_float_runs_on_the_host():
    graph = _graph()
    placement = plan_placement(graph)
    on_host = {n.name or n.op_type for n in graph.nodes if id(n) in placement.host_nodes}
    ops = {n.op_type for n in graph.nodes if id(n) in placement.host_nodes}
    assert {"Shape", "Gather", "Cast", "Div", "Concat", "Slice"} <= ops, on_host
    assert not any(n.op_type in ("Resize", "Add") for n in graph.nodes if id(n) in placement.host_nodes)


def test_float_constant_read_inside_a_subgraph_stays_on_the_device():
    """A Conv bias of the main graph read only inside an If branch (Silero VAD's opset-18 export) went to the
    host, and the branch's Conv got a CPU bias on the GPU."""
    bias = numpy_helper.from_array(np.ones(4, np.float32), "bias")
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    branch = helper.make_graph([helper.make_node("Conv", ["x", "w", "bias"], ["y_then"])], "then", [],
                               [helper.make_tensor_value_info("y_then", TP.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", TP.FLOAT, None)])
    g = helper.make_graph([helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=other)], "g",
                          [helper.make_tensor_value_info("x", TP.FLOAT, [1, 3, 4, 4]),
                           helper.make_tensor_value_info("flag", TP.BOOL, [])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)], [bias, w])
    graph = kiln.parse(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert graph.constants["bias"].id not in host_constants(graph)
