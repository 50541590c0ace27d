"""Host placement for GPU engines (a pure function of the graph, tested without a GPU): small float
constants that kernels read as Python values (Resize's scales, a divisor of a size computed from Shape) stay
on the host so CUDA graph capture never synchronizes on them; those read as data by device layers do not."""
import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import kiln
from kiln.engine.placement import host_constants, plan_body_placement, plan_placement
from kiln.ops import default_registry


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


def _if_on_an_input(index_input: bool = False):
    """silero-vad's shape: an int64 scalar input (the sample rate) picks a branch; with ``index_input`` the model
    also reads it as data (a Gather index on a float tensor), which a device layer must get on the device."""
    inits = [numpy_helper.from_array(np.array(16000, np.int64), "sr16k")]
    branch = lambda name, k: helper.make_graph(  # noqa: E731
        [helper.make_node("Mul", ["x", name], [f"out_{name}"])], f"b_{name}", [],
        [helper.make_tensor_value_info(f"out_{name}", TP.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(k, np.float32), name)])
    nodes = [helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["y"], then_branch=branch("two", 2.0), else_branch=branch("three", 3.0))]
    outputs = [helper.make_tensor_value_info("y", TP.FLOAT, [2, 3])]
    if index_input:
        nodes.append(helper.make_node("Gather", ["x", "sr"], ["picked"], axis=1))
        outputs.append(helper.make_tensor_value_info("picked", TP.FLOAT, [2]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [2, 3]),
                                       helper.make_tensor_value_info("sr", TP.INT64, [])], outputs, inits)
    return kiln.parse(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_small_integer_input_read_only_on_the_host_stays_there():
    """The condition of an If computed from an input on the host: no device read (a CUDA graph capture would
    fail on it), and the runtime keys captures by the input's value (Program.host_inputs)."""
    graph = _if_on_an_input()
    placement = plan_placement(graph)
    equal = next(n for n in graph.nodes if n.op_type == "Equal")
    if_node = next(n for n in graph.nodes if n.op_type == "If")
    assert placement.host_inputs == {"sr"}
    assert id(equal) in placement.host_nodes and id(if_node) not in placement.moves


def test_integer_input_read_as_data_by_a_device_layer_goes_to_the_device():
    placement = plan_placement(_if_on_an_input(index_input=True))
    assert placement.host_inputs == frozenset()


def test_run_key_holds_the_values_of_host_inputs_only():
    import torch

    from kiln.engine.runtime import run_key
    feed = {"x": torch.zeros(2, 3), "sr": torch.tensor(16000)}
    shapes, values = run_key(feed, frozenset({"sr"}))
    assert values == (("sr", (16000,)),) and [k for k, _, _ in shapes] == ["sr", "x"]
    assert run_key(feed, frozenset())[1] == ()
    assert run_key({**feed, "sr": torch.tensor(8000)}, frozenset({"sr"})) != run_key(feed, frozenset({"sr"}))


def _host_arithmetic_on_an_input(read_in_body: bool):
    """m = n + 1 on the host, from a small integer input n; m is either a graph output or read as data inside
    an If body (bodies run on the device and get no copies)."""
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    nodes = [helper.make_node("Add", ["n", "one"], ["m"])]
    outputs = [helper.make_tensor_value_info("m", TP.INT64, [1])]
    if read_in_body:
        def body(name):
            return helper.make_graph([helper.make_node("Cast", ["m"], ["mf"], to=TP.FLOAT),
                                      helper.make_node("Mul", ["x", "mf"], [f"o_{name}"])], name, [],
                                     [helper.make_tensor_value_info(f"o_{name}", TP.FLOAT, [2, 3])])
        nodes += [helper.make_node("ReduceSum", ["m"], ["s"], keepdims=0),
                  helper.make_node("Cast", ["s"], ["c"], to=TP.BOOL),
                  helper.make_node("If", ["c"], ["y"], then_branch=body("a"), else_branch=body("b"))]
        outputs = [helper.make_tensor_value_info("y", TP.FLOAT, [2, 3])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [2, 3]),
                                       helper.make_tensor_value_info("n", TP.INT64, [1])], outputs, [one])
    return kiln.parse(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_integer_input_whose_host_result_is_an_output_goes_to_the_device():
    """An output of a GPU engine stays on its device: n + 1 computed on the host would reach the caller as a CPU
    tensor."""
    assert plan_placement(_host_arithmetic_on_an_input(read_in_body=False)).host_inputs == frozenset()


def test_integer_input_whose_host_result_is_read_inside_a_subgraph_goes_to_the_device():
    """A body's device layer would get n + 1 as a CPU tensor (Mul of a CUDA tensor and a CPU one fails)."""
    assert plan_placement(_host_arithmetic_on_an_input(read_in_body=True)).host_inputs == frozenset()


def test_a_string_input_is_not_a_host_input_candidate():
    """Only integer and bool inputs are; a string input has no torch dtype (TypeError before)."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("s", TP.STRING, [1]),
                           helper.make_tensor_value_info("x", TP.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [2])])
    graph = kiln.parse(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert plan_placement(graph).host_inputs == frozenset()


def test_values_of_a_host_input_past_the_cap_run_without_a_recorded_layout_or_graph():
    """An integer input that counts (a step) would record a layout and capture a graph on every run: past
    MAX_VALUE_GRAPHS values per input shapes a context runs without, and says so once."""
    import torch

    from kiln.engine.runtime import MAX_VALUE_GRAPHS, run_key
    ctx = kiln.build(_if_on_an_input()).create_execution_context()
    x = torch.zeros(2, 3)
    cache = {run_key({"x": x, "sr": torch.tensor(v)}, frozenset({"sr"})): None for v in range(MAX_VALUE_GRAPHS - 1)}
    new = run_key({"x": x, "sr": torch.tensor(99)}, frozenset({"sr"}))
    assert not ctx._value_keys_over_cap(cache, new, "arena layouts")
    cache[run_key({"x": x, "sr": torch.tensor(98)}, frozenset({"sr"}))] = None
    assert ctx._value_keys_over_cap(cache, new, "arena layouts") and ctx._value_keys_over_cap(cache, new, "arena layouts")
    assert [n for n in ctx.notes if "further values run without" in n] == [ctx.notes[-1]]
    other_shape = run_key({"x": torch.zeros(4, 3), "sr": torch.tensor(1)}, frozenset({"sr"}))
    assert not ctx._value_keys_over_cap(cache, other_shape, "arena layouts")


def _branching_model(branch):
    g = helper.make_graph([helper.make_node("If", ["flag"], ["y"], then_branch=branch("a"), else_branch=branch("b"))],
                          "g", [helper.make_tensor_value_info("v", TP.INT64, [3]),
                                helper.make_tensor_value_info("flag", TP.BOOL, [])],
                          [helper.make_tensor_value_info("y", TP.INT64, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_body_constant_read_as_axes_and_as_data_lives_on_the_host_and_is_copied_for_the_data_reader():
    """silero-vad's STFT reads one int constant as Unsqueeze's axes and as Equal's data inside an If branch: it
    stays on the host (no device-to-host read per run), and the device Add gets a pinned copy."""
    def branch(name):
        nodes = [helper.make_node("Unsqueeze", ["v", f"k_{name}"], [f"u_{name}"]),
                 helper.make_node("Add", [f"u_{name}", f"k_{name}"], [f"y_{name}"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"y_{name}", TP.INT64, None)],
                                 [numpy_helper.from_array(np.array([1], np.int64), f"k_{name}")])
    graph = kiln.parse(_branching_model(branch))
    on_host = host_constants(graph)
    bodies = plan_body_placement(graph, default_registry(), plan_placement(graph))
    for n in graph.all_nodes():
        if n.op_type in ("Unsqueeze", "Add"):
            assert n.inputs[1].id in on_host
            assert bodies.moves.get(id(n), ()) == ((1,) if n.op_type == "Add" else ())


def test_shape_arithmetic_in_a_body_runs_on_the_host():
    """silero-vad's decoder takes Shape of a device tensor inside its If branches and reshapes by it: Shape,
    Gather and Concat run on the host, Reshape reads the host result as ints, nothing is copied."""
    def branch(name):
        nodes = [helper.make_node("Shape", ["v"], [f"s_{name}"]),
                 helper.make_node("Gather", [f"s_{name}", f"i_{name}"], [f"n_{name}"], axis=0),
                 helper.make_node("Concat", [f"one_{name}", f"n_{name}"], [f"t_{name}"], axis=0),
                 helper.make_node("Reshape", ["v", f"t_{name}"], [f"y_{name}"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"y_{name}", TP.INT64, None)],
                                 [numpy_helper.from_array(np.array([0], np.int64), f"i_{name}"),
                                  numpy_helper.from_array(np.array([1], np.int64), f"one_{name}")])
    graph = kiln.parse(_branching_model(branch))
    bodies = plan_body_placement(graph, default_registry(), plan_placement(graph))
    ops = sorted(n.op_type for n in graph.all_nodes() if id(n) in bodies.host_nodes)
    assert ops == sorted(["Shape", "Gather", "Concat"] * 2)
    assert not bodies.moves


def test_a_branch_output_read_only_as_a_shape_stays_on_the_host():
    """An If choosing a Reshape target: each branch's Concat runs on the host, and its result is handed back on
    the host (host_outputs), so the outer Reshape reads it without a device round trip; an If output read as
    data is copied to the device as before."""
    def branch(name):
        nodes = [helper.make_node("Concat", [f"a_{name}", f"b_{name}"], [f"t_{name}"], axis=0),
                 helper.make_node("Identity", [f"a_{name}"], [f"d_{name}"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"t_{name}", TP.INT64, [2]),
                                                   helper.make_tensor_value_info(f"d_{name}", TP.INT64, [1])],
                                 [numpy_helper.from_array(np.array([3], np.int64), f"a_{name}"),
                                  numpy_helper.from_array(np.array([-1], np.int64), f"b_{name}")])
    nodes = [helper.make_node("If", ["flag"], ["target", "data"], then_branch=branch("a"), else_branch=branch("b")),
             helper.make_node("Reshape", ["x", "target"], ["y"]),
             helper.make_node("Cast", ["data"], ["data_f"], to=TP.FLOAT),
             helper.make_node("Add", ["y", "data_f"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [6]),
                                       helper.make_tensor_value_info("flag", TP.BOOL, [])],
                          [helper.make_tensor_value_info("z", TP.FLOAT, None)])
    graph = kiln.parse(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    bodies = plan_body_placement(graph, default_registry(), plan_placement(graph))
    kept = {v.name for g_ in graph.walk_graphs() for v in g_.outputs if v.id in bodies.host_outputs}
    assert kept == {"t_a", "t_b"}


def test_a_host_value_moved_during_capture_is_written_by_fill_kernels(monkeypatch):
    """Inside CUDA graph capture a fresh host value is not pinned (the host allocator's event queries would
    invalidate the capture): its numbers are written into a device tensor by fill kernels. Checked here on the
    CPU with the capture flag forced; the GPU tests capture for real."""
    import torch
    from kiln.engine.placement import to_device
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    for t in (torch.tensor([3, -1, 7]), torch.tensor(5), torch.tensor([[1, 2], [3, 4]]), torch.tensor([True, False])):
        keep = []
        got = to_device(t, torch.device("cpu"), keep)
        assert got is not t and got.dtype == t.dtype and torch.equal(got, t) and not keep


def _size_condition_model():
    """silero-vad's decoder, reduced: inside each branch of an If, ``If(Not(Size(v) == 0))`` picks Identity or
    Neg of v."""
    def inner(name, op):
        return helper.make_graph([helper.make_node(op, ["v"], [f"w_{name}"])], name, [],
                                 [helper.make_tensor_value_info(f"w_{name}", TP.INT64, None)])

    def branch(name):
        nodes = [helper.make_node("Size", ["v"], [f"n_{name}"]),
                 helper.make_node("Equal", [f"n_{name}", f"zero_{name}"], [f"e_{name}"]),
                 helper.make_node("Not", [f"e_{name}"], [f"c_{name}"]),
                 helper.make_node("If", [f"c_{name}"], [f"y_{name}"], then_branch=inner(f"{name}_t", "Identity"),
                                  else_branch=inner(f"{name}_e", "Neg"))]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"y_{name}", TP.INT64, None)],
                                 [numpy_helper.from_array(np.array(0, np.int64), f"zero_{name}")])
    g = helper.make_graph([helper.make_node("If", ["flag"], ["y"], then_branch=branch("a"), else_branch=branch("b"))],
                          "g", [helper.make_tensor_value_info("v", TP.INT64, ["n"]),  # dynamic: Size is not folded
                                helper.make_tensor_value_info("flag", TP.BOOL, [])],
                          [helper.make_tensor_value_info("y", TP.INT64, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_condition_computed_from_a_size_in_a_branch_stays_on_the_host():
    """The branch optimizer's elementwise fusion made ``Size == 0 -> Not`` one kiln::Elementwise region, which is
    no host op: on a GPU it ran on the device and the nested If read its condition back, a synchronization that
    broke silero-vad's CUDA-graph capture. Shape arithmetic now stays out of regions: after a build, every If
    condition inside the bodies is a host value, and the engine still computes the right branch."""
    model = _size_condition_model()
    engine = kiln.build(model, kiln.BuilderConfig(device="cpu", profiles=(kiln.Profile.of(v=((1,), (3,), (8,))),)))
    graph = engine.program.graph
    assert not [n for n in graph.all_nodes() if n.op_type == "Elementwise"]
    bodies = plan_body_placement(graph, engine.registry, plan_placement(graph, engine.registry))
    conditions = [n.inputs[0] for g in graph.walk_graphs() if g is not graph for n in g.nodes if n.op_type == "If"]
    assert conditions and all(v.id in bodies.host_values for v in conditions)
    ctx = engine.create_execution_context()
    for flag in (True, False):
        out = ctx.infer({"v": np.array([1, -2, 3], np.int64), "flag": np.array(flag)})
        np.testing.assert_array_equal(out["y"], [1, -2, 3])
