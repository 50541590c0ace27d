"""Contexts of one engine run at once from several threads (a server's instances): an If or Loop body must
read and write its own run's values. The subgraph runner's env was one shared slot per layer, so one thread's
If body could write into another's run and return the other's values."""
import sys
import threading

import numpy as np
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import kiln


def _if_model():
    """y = x * 2 when sum(x) > 0 else x * 3, then a Loop adding x three times, all reading the outer x."""
    then = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TP.FLOAT, [4])],
                             [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    other = helper.make_graph([helper.make_node("Mul", ["x", "three"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TP.FLOAT, [4])],
                              [numpy_helper.from_array(np.array(3.0, np.float32), "three")])
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                              helper.make_node("Add", ["acc_in", "x"], ["acc_out"])], "body",
                             [helper.make_tensor_value_info("i", TP.INT64, []),
                              helper.make_tensor_value_info("cond_in", TP.BOOL, []),
                              helper.make_tensor_value_info("acc_in", TP.FLOAT, [4])],
                             [helper.make_tensor_value_info("cond_out", TP.BOOL, []),
                              helper.make_tensor_value_info("acc_out", TP.FLOAT, [4])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("Loop", ["trips", "true", "y"], ["z"], body=body)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [4])],
                          [helper.make_tensor_value_info("z", TP.FLOAT, [4])],
                          [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                           numpy_helper.from_array(np.array(3, np.int64), "trips"),
                           numpy_helper.from_array(np.array(True), "true")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_threads_running_one_engines_control_flow_keep_their_own_values():
    engine = kiln.build(_if_model())
    inputs = [np.full(4, v, np.float32) for v in (1.0, -1.0, 2.0, -5.0)]
    want = [x * (2 if x.sum() > 0 else 3) + 3 * x for x in inputs]
    wrong: list = []

    def work(k):
        ctx = engine.create_execution_context()
        for _ in range(300):
            got = ctx.infer({"x": inputs[k]})["z"]
            if not np.array_equal(got, want[k]):
                wrong.append((k, got))
                return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows, to expose a shared slot
    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not wrong, wrong[:2]
