"""Control flow, sequence, optional and loss ops through Kiln, beyond the ONNX node suite.

Losses are checked against onnx.reference on random inputs. Control-flow and sequence graphs are checked
against onnx.reference where it follows the spec, and against numpy-computed answers where it does not
(its Loop skips the body when 'cond' is omitted, its Scan handles only axis 0 / forward, and its
SequenceInsert mishandles position == len(sequence)).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oracle import check_op, one_node_model, run_both  # noqa: E402

import kiln  # noqa: E402

rng = np.random.default_rng(7)
F32 = np.float32


# -- helpers -------------------------------------------------------------------------------------------

def _tensor_info(name: str, a: np.ndarray):
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))


def _info(name: str, v):
    if isinstance(v, list):
        return helper.make_tensor_sequence_value_info(name, helper.np_dtype_to_tensor_dtype(v[0].dtype), None)
    return _tensor_info(name, np.asarray(v))


def _model(nodes, feed: dict, outputs: list[str], opset: int = 21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [_info(n, v) for n, v in feed.items()],
                              [helper.make_value_info(o, onnx.TypeProto()) for o in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _body(nodes, inputs, outputs, name="body"):
    """A subgraph; inputs/outputs are (name, elem_type, shape) with shape None for unknown."""
    return helper.make_graph(nodes, name, [helper.make_tensor_value_info(*i) for i in inputs],
                             [helper.make_tensor_value_info(*o) for o in outputs])


def _same(got, want, rtol=1e-5, atol=1e-6, where="out"):
    if isinstance(want, list):
        assert isinstance(got, list), f"{where}: expected a sequence, got {type(got).__name__}"
        assert len(got) == len(want), f"{where}: length {len(got)}, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, rtol, atol, f"{where}[{i}]")
        return
    if want is None:
        assert got is None, f"{where}: expected an empty optional"
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{where}: dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"{where}: shape {got.shape}, expected {want.shape}"
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol,
                               err_msg=where)


def _kiln(model, feed) -> list:
    got = kiln.interpret(kiln.parse(model), feed)
    return [got[o.name] for o in model.graph.output]


def _check_ref(model, feed, rtol=1e-5, atol=1e-6):
    ref, got = run_both(model, feed)
    for i, (g, r) in enumerate(zip(got, ref)):
        _same(g, r, rtol, atol, f"output {i}")


def _check_expected(model, feed, expected: list, rtol=1e-5, atol=1e-6):
    for i, (g, w) in enumerate(zip(_kiln(model, feed), expected)):
        _same(g, w, rtol, atol, f"output {i}")


def _rand(*shape, dtype=F32):
    return rng.standard_normal(shape).astype(dtype)


# -- losses --------------------------------------------------------------------------------------------

# (op, input shape, reduction, with weight, ignore_index, dtype, opset, outputs, rtol)
LOSS_ROWS = [
    ("NegativeLogLikelihoodLoss", (4, 5), "mean", False, None, F32, 13, 1, 1e-5),
    ("NegativeLogLikelihoodLoss", (4, 5), "sum", True, None, F32, 13, 1, 1e-5),
    ("NegativeLogLikelihoodLoss", (3, 4, 6), "none", True, 2, F32, 22, 1, 1e-5),
    ("NegativeLogLikelihoodLoss", (3, 4, 2, 3), "mean", True, 1, np.float64, 13, 1, 1e-7),
    ("NegativeLogLikelihoodLoss", (3, 4, 2, 3), "mean", False, 0, F32, 12, 1, 1e-5),
    ("NegativeLogLikelihoodLoss", (2, 3, 5), "sum", False, -100, F32, 13, 1, 1e-5),
    ("NegativeLogLikelihoodLoss", (2, 3, 5), "mean", True, 7, np.float16, 13, 1, 2e-3),
    ("SoftmaxCrossEntropyLoss", (4, 5), "mean", False, None, F32, 13, 2, 1e-5),
    ("SoftmaxCrossEntropyLoss", (4, 5), "none", True, None, F32, 12, 2, 1e-5),
    ("SoftmaxCrossEntropyLoss", (3, 4, 6), "sum", True, 3, F32, 13, 1, 1e-5),
    ("SoftmaxCrossEntropyLoss", (2, 3, 2, 2, 2), "mean", True, -5, np.float64, 13, 2, 1e-7),
    ("SoftmaxCrossEntropyLoss", (3, 4, 5), "mean", False, 2, F32, 13, 2, 1e-5),
    ("SoftmaxCrossEntropyLoss", (3, 4, 5), "none", False, -1, np.float16, 13, 2, 3e-3),
]


@pytest.mark.parametrize("op,shape,reduction,weighted,ii,dtype,opset,n_out,rtol", LOSS_ROWS)
def test_loss(op, shape, reduction, weighted, ii, dtype, opset, n_out, rtol):
    n, c, rest = shape[0], shape[1], shape[2:]
    x = rng.standard_normal(shape).astype(dtype)
    target = rng.integers(0, c, (n,) + rest).astype(np.int64)
    if ii is not None:
        target.reshape(-1)[::3] = ii
    inputs = {"x": x, "target": target, "weight": rng.random(c).astype(dtype) + 0.5 if weighted else None}
    attrs = {"reduction": reduction}
    if ii is not None:
        attrs["ignore_index"] = ii
    check_op(op, inputs, attrs, n_outputs=n_out, opset=opset, rtol=rtol, atol=rtol)


def test_loss_mean_with_everything_ignored_is_nan():
    x, target = _rand(2, 3), np.array([1, 1], dtype=np.int64)
    node = helper.make_node("NegativeLogLikelihoodLoss", ["x", "t"], ["y"], ignore_index=1)
    (y,) = _kiln(_model([node], {"x": x, "t": target}, ["y"]), {"x": x, "t": target})
    assert np.isnan(y)


# -- sequences -----------------------------------------------------------------------------------------

A, B, C = _rand(2, 3), _rand(4, 3), _rand(1, 3)
SEQ = {"a": A, "b": B, "c": C}


def _construct():
    return helper.make_node("SequenceConstruct", ["a", "b", "c"], ["s"])


@pytest.mark.parametrize("pos", [0, 2, -1, -3])
def test_sequence_at(pos):
    feed = {**SEQ, "p": np.array(pos, dtype=np.int64)}
    nodes = [_construct(), helper.make_node("SequenceAt", ["s", "p"], ["y"])]
    _check_ref(_model(nodes, feed, ["y"]), feed)


@pytest.mark.parametrize("pos", [0, 1, -1, -3, None])
def test_sequence_insert(pos):
    feed = {**SEQ, "t": _rand(3, 3)}
    if pos is not None:
        feed["p"] = np.array(pos, dtype=np.int32)
    nodes = [_construct(), helper.make_node("SequenceInsert", ["s", "t"] + (["p"] if pos is not None else []), ["y"]),
             helper.make_node("SequenceLength", ["y"], ["n"])]
    _check_ref(_model(nodes, feed, ["y", "n"]), feed)


def test_sequence_insert_at_len_appends():
    feed = {**SEQ, "t": _rand(3, 3), "p": np.array(3, dtype=np.int64)}
    nodes = [_construct(), helper.make_node("SequenceInsert", ["s", "t", "p"], ["y"])]
    _check_expected(_model(nodes, feed, ["y"]), feed, [[A, B, C, feed["t"]]])


@pytest.mark.parametrize("pos", [0, 1, -1, -3, None])
def test_sequence_erase(pos):
    feed = dict(SEQ)
    if pos is not None:
        feed["p"] = np.array(pos, dtype=np.int64)
    nodes = [_construct(), helper.make_node("SequenceErase", ["s"] + (["p"] if pos is not None else []), ["y"])]
    _check_ref(_model(nodes, feed, ["y"]), feed)


def test_sequence_empty_then_insert():
    feed = {"t": _rand(2, 2)}
    nodes = [helper.make_node("SequenceEmpty", [], ["e"], dtype=TP.FLOAT),
             helper.make_node("SequenceLength", ["e"], ["n0"]),
             helper.make_node("SequenceInsert", ["e", "t"], ["s"]),
             helper.make_node("SequenceLength", ["s"], ["n1"])]
    _check_expected(_model(nodes, feed, ["n0", "s", "n1"]), feed,
                    [np.array(0, dtype=np.int64), [feed["t"]], np.array(1, dtype=np.int64)])


def test_sequence_input_and_output():
    feed = {"s": [_rand(2), _rand(3)], "t": _rand(4)}
    nodes = [helper.make_node("SequenceInsert", ["s", "t"], ["y"])]
    _check_expected(_model(nodes, feed, ["y"]), feed, [feed["s"] + [feed["t"]]])


# (input shape, axis, split, keepdims)
SPLIT_ROWS = [
    ((4, 6), 1, None, 0),
    ((4, 6), 1, None, 1),
    ((4, 6), -1, np.array(4, dtype=np.int64), 1),
    ((5, 3), 0, np.array([2, 3], dtype=np.int64), 1),
    ((5, 3), 0, np.array([2, 0, 3], dtype=np.int32), 0),
    ((2, 3, 4), -2, None, 0),
]


@pytest.mark.parametrize("shape,axis,split,keepdims", SPLIT_ROWS)
def test_split_to_sequence(shape, axis, split, keepdims):
    inputs = {"x": _rand(*shape), "split": split}
    model = one_node_model("SplitToSequence", inputs, {"axis": axis, "keepdims": keepdims})
    _check_ref(model, {k: v for k, v in inputs.items() if v is not None})


# (axis, new_axis)
CONCAT_ROWS = [(0, 0), (1, 0), (-1, 0), (0, 1), (-1, 1), (2, 1), (-3, 1)]


@pytest.mark.parametrize("axis,new_axis", CONCAT_ROWS)
def test_concat_from_sequence(axis, new_axis):
    parts = [_rand(2, 3) for _ in range(3)] if new_axis or axis else [_rand(k, 3) for k in (1, 2, 3)]
    feed = {"a": parts[0], "b": parts[1], "c": parts[2]}
    nodes = [_construct(), helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=axis, new_axis=new_axis)]
    _check_ref(_model(nodes, feed, ["y"]), feed)


def test_sequence_map_zip_and_broadcast():
    feed = {"s": [_rand(2), _rand(3), _rand(1)], "u": [_rand(2), _rand(3), _rand(1)], "t": _rand(1)}
    body = _body([helper.make_node("Add", ["x", "y"], ["xy"]), helper.make_node("Mul", ["xy", "z"], ["out"]),
                  helper.make_node("Identity", ["x"], ["same"])],
                 [("x", TP.FLOAT, None), ("y", TP.FLOAT, None), ("z", TP.FLOAT, [1])],
                 [("out", TP.FLOAT, None), ("same", TP.FLOAT, None)])
    nodes = [helper.make_node("SequenceMap", ["s", "u", "t"], ["o1", "o2"], body=body)]
    want = [[(x + y) * feed["t"] for x, y in zip(feed["s"], feed["u"])], feed["s"]]
    _check_expected(_model(nodes, feed, ["o1", "o2"]), feed, want)


# -- optionals -----------------------------------------------------------------------------------------

def test_optional_of_tensor():
    feed = {"x": _rand(2, 2)}
    nodes = [helper.make_node("Optional", ["x"], ["o"]), helper.make_node("OptionalHasElement", ["o"], ["h"]),
             helper.make_node("OptionalGetElement", ["o"], ["y"])]
    _check_expected(_model(nodes, feed, ["h", "y"]), feed, [np.array(True), feed["x"]])


def test_empty_optional():
    tp = helper.make_tensor_type_proto(TP.FLOAT, [2])
    nodes = [helper.make_node("Optional", [], ["o"], type=tp), helper.make_node("OptionalHasElement", ["o"], ["h"]),
             helper.make_node("OptionalHasElement", [], ["h2"])]
    _check_expected(_model(nodes, {}, ["o", "h", "h2"], opset=18), {}, [None, np.array(False), np.array(False)])


def test_optional_of_sequence():
    feed = {"s": [_rand(2), _rand(3)]}
    nodes = [helper.make_node("Optional", ["s"], ["o"]), helper.make_node("OptionalGetElement", ["o"], ["y"]),
             helper.make_node("OptionalGetElement", ["s"], ["z"])]
    _check_expected(_model(nodes, feed, ["y", "z"], opset=18), feed, [feed["s"], feed["s"]])


def test_optional_get_element_of_empty_fails():
    tp = helper.make_tensor_type_proto(TP.FLOAT, [2])
    nodes = [helper.make_node("Optional", [], ["o"], type=tp), helper.make_node("OptionalGetElement", ["o"], ["y"])]
    with pytest.raises(kiln.KilnError, match="empty optional"):
        _kiln(_model(nodes, {}, ["y"], opset=18), {})


# -- If ------------------------------------------------------------------------------------------------

def _if_model(cond_shape=()):
    then = _body([helper.make_node("Add", ["x", "y"], ["r"])], [], [("r", TP.FLOAT, [2, 3])], "then")
    other = _body([helper.make_node("Mul", ["x", "y"], ["r2"])], [], [("r2", TP.FLOAT, [2, 3])], "else")
    node = helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=other)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TP.BOOL, list(cond_shape)),
                                            helper.make_tensor_value_info("x", TP.FLOAT, [2, 3]),
                                            helper.make_tensor_value_info("y", TP.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("z", TP.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("cond,cond_shape", [(True, ()), (False, ()), (True, (1,)), (False, (1, 1))])
def test_if_reads_outer_scope(cond, cond_shape):
    feed = {"c": np.full(cond_shape, cond), "x": _rand(2, 3), "y": _rand(2, 3)}
    _check_ref(_if_model(cond_shape), feed)


def test_if_sequence_output():
    then = helper.make_graph([helper.make_node("SequenceConstruct", ["x", "x"], ["s1"])], "then", [],
                             [helper.make_tensor_sequence_value_info("s1", TP.FLOAT, None)])
    other = helper.make_graph([helper.make_node("SequenceEmpty", [], ["s2"])], "else", [],
                              [helper.make_tensor_sequence_value_info("s2", TP.FLOAT, None)])
    feed = {"c": np.array(True), "x": _rand(3)}
    nodes = [helper.make_node("If", ["c"], ["s"], then_branch=then, else_branch=other)]
    _check_expected(_model(nodes, feed, ["s"]), feed, [[feed["x"], feed["x"]]])
    feed["c"] = np.array(False)
    _check_expected(_model(nodes, feed, ["s"]), feed, [[]])


# -- Loop ----------------------------------------------------------------------------------------------

def _loop_body(cond_node=None):
    """Body (i, cond, acc) -> (cond', acc + x * i, acc + x * i as a scan output); x comes from outer scope."""
    nodes = [helper.make_node("Cast", ["i"], ["fi"], to=TP.FLOAT), helper.make_node("Mul", ["x", "fi"], ["xi"]),
             helper.make_node("Add", ["acc", "xi"], ["acc2"]), helper.make_node("Identity", ["acc2"], ["scan"])]
    nodes.append(cond_node or helper.make_node("Identity", ["cond"], ["cond2"]))
    return _body(nodes, [("i", TP.INT64, []), ("cond", TP.BOOL, []), ("acc", TP.FLOAT, [2])],
                 [("cond2", TP.BOOL, []), ("acc2", TP.FLOAT, [2]), ("scan", TP.FLOAT, [2])])


def _loop_expected(x, acc, trips):
    scans = []
    for i in range(trips):
        acc = acc + x * np.float32(i)
        scans.append(acc)
    return [acc, np.stack(scans) if scans else np.zeros((0, 2), F32)]


@pytest.mark.parametrize("trips", [0, 1, 4])
def test_loop_for(trips):
    feed = {"m": np.array(trips, dtype=np.int64), "x": _rand(2), "a0": _rand(2)}
    nodes = [helper.make_node("Loop", ["m", "", "a0"], ["a", "s"], body=_loop_body())]
    _check_expected(_model(nodes, feed, ["a", "s"]), feed, _loop_expected(feed["x"], feed["a0"], trips))


@pytest.mark.parametrize("use_m,use_cond", [(False, True), (True, True), (True, False)])
def test_loop_while(use_m, use_cond):
    """The body stops the loop once i + 1 reaches 'limit' (3 trips); M=10 does not bind first.

    With the cond input omitted the body's cond output still ends the loop (as onnxruntime does).
    """
    stop = helper.make_node("Less", ["i1", "limit"], ["cond2"])
    body = _loop_body(stop)
    body.node.insert(0, helper.make_node("Add", ["i", "one"], ["i1"]))
    body.initializer.append(onnx.numpy_helper.from_array(np.array(1, dtype=np.int64), "one"))
    feed = {"limit": np.array(3, dtype=np.int64), "x": _rand(2), "a0": _rand(2)}
    if use_cond:
        feed["c"] = np.array(True)
    if use_m:
        feed["m"] = np.array(10, dtype=np.int64)
    nodes = [helper.make_node("Loop", ["m" if use_m else "", "c" if use_cond else "", "a0"], ["a", "s"], body=body)]
    _check_expected(_model(nodes, feed, ["a", "s"]), feed, _loop_expected(feed["x"], feed["a0"], 3))
    if use_cond:
        _check_ref(_model(nodes, feed, ["a", "s"]), feed)


def test_loop_false_cond_runs_nothing():
    feed = {"m": np.array(5, dtype=np.int64), "c": np.array(False), "x": _rand(2), "a0": _rand(2)}
    nodes = [helper.make_node("Loop", ["m", "c", "a0"], ["a", "s"], body=_loop_body())]
    _check_expected(_model(nodes, feed, ["a", "s"]), feed, _loop_expected(feed["x"], feed["a0"], 0))


def test_loop_carries_a_sequence_and_nests_if():
    """Each trip appends x (even i) or -x (odd i) to a sequence: an If inside the body reads i and x."""
    even = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "even", [],
                             [helper.make_tensor_value_info("e", TP.FLOAT, [2])])
    odd = helper.make_graph([helper.make_node("Neg", ["x"], ["o"])], "odd", [],
                            [helper.make_tensor_value_info("o", TP.FLOAT, [2])])
    body = helper.make_graph(
        [helper.make_node("Mod", ["i", "two"], ["r"]), helper.make_node("Equal", ["r", "zero"], ["is_even"]),
         helper.make_node("If", ["is_even"], ["v"], then_branch=even, else_branch=odd),
         helper.make_node("SequenceInsert", ["seq", "v"], ["seq2"]),
         helper.make_node("Identity", ["cond"], ["cond2"])],
        "body", [helper.make_tensor_value_info("i", TP.INT64, []), helper.make_tensor_value_info("cond", TP.BOOL, []),
                 helper.make_tensor_sequence_value_info("seq", TP.FLOAT, None)],
        [helper.make_tensor_value_info("cond2", TP.BOOL, []),
         helper.make_tensor_sequence_value_info("seq2", TP.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(np.array(2, dtype=np.int64), "two"),
                     onnx.numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")])
    feed = {"m": np.array(3, dtype=np.int64), "x": _rand(2)}
    nodes = [helper.make_node("SequenceEmpty", [], ["s0"]),
             helper.make_node("Loop", ["m", "", "s0"], ["s"], body=body)]
    x = feed["x"]
    _check_expected(_model(nodes, feed, ["s"]), feed, [[x, -x, x]])


# -- Scan ----------------------------------------------------------------------------------------------

def _cumsum_body(n_inputs=1):
    """state s, scan elements x[, y] -> s + x (+ y), and that new state as the scan output."""
    nodes = [helper.make_node("Add", ["s", "x"], ["sx"])]
    ins = [("s", TP.FLOAT, [2]), ("x", TP.FLOAT, [2])]
    if n_inputs == 2:
        nodes.append(helper.make_node("Add", ["sx", "y"], ["s2"]))
        ins.append(("y", TP.FLOAT, [2]))
    else:
        nodes.append(helper.make_node("Identity", ["sx"], ["s2"]))
    nodes.append(helper.make_node("Identity", ["s2"], ["out"]))
    return _body(nodes, ins, [("s2", TP.FLOAT, [2]), ("out", TP.FLOAT, [2])])


def _cumsum(s, xs):
    outs = []
    for x in xs:
        s = s + x
        outs.append(s)
    return s, outs


# (scan input axes, input directions, output axes, output directions)
SCAN_ROWS = [
    (None, None, None, None),
    ([1], None, None, None),
    (None, [1], None, None),
    (None, None, [1], None),
    (None, None, [-1], [1]),
    ([-1], [1], [1], [1]),
]


@pytest.mark.parametrize("in_axes,in_dirs,out_axes,out_dirs", SCAN_ROWS)
def test_scan(in_axes, in_dirs, out_axes, out_dirs):
    in_axis, out_axis = (in_axes or [0])[0], (out_axes or [0])[0]
    steps = [_rand(2) for _ in range(4)]
    x = np.stack(steps, axis=in_axis)
    feed = {"s0": _rand(2), "x": x}
    attrs = {"num_scan_inputs": 1, "body": _cumsum_body()}
    for k, v in (("scan_input_axes", in_axes), ("scan_input_directions", in_dirs),
                 ("scan_output_axes", out_axes), ("scan_output_directions", out_dirs)):
        if v is not None:
            attrs[k] = v
    nodes = [helper.make_node("Scan", ["s0", "x"], ["s", "y"], **attrs)]
    final, outs = _cumsum(feed["s0"], steps[::-1] if in_dirs else steps)
    if out_dirs:
        outs = outs[::-1]
    _check_expected(_model(nodes, feed, ["s", "y"]), feed, [final, np.stack(outs, axis=out_axis)])
    if not (in_axes or in_dirs or out_axes or out_dirs):
        _check_ref(_model(nodes, feed, ["s", "y"]), feed)


def test_scan_two_inputs_zip():
    feed = {"s0": _rand(2), "x": _rand(3, 2), "y": _rand(3, 2)}
    nodes = [helper.make_node("Scan", ["s0", "x", "y"], ["s", "o"], num_scan_inputs=2, body=_cumsum_body(2),
                              scan_input_directions=[0, 1])]
    final, outs = _cumsum(feed["s0"], [a + b for a, b in zip(feed["x"], feed["y"][::-1])])
    _check_expected(_model(nodes, feed, ["s", "o"]), feed, [final, np.stack(outs)], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lens,direction", [(None, 0), ([3, 2], 0), ([1, 3], 1), ([0, 3], 0)])
def test_scan8_batched(lens, direction):
    feed = {"s0": _rand(2, 2), "x": _rand(2, 3, 2)}
    ins = ["", "s0", "x"]
    if lens is not None:
        feed["lens"] = np.array(lens, dtype=np.int64)
        ins[0] = "lens"
    nodes = [helper.make_node("Scan", ins, ["s", "y"], num_scan_inputs=1, body=_cumsum_body(),
                              directions=[direction])]
    finals, scans = [], []
    for b in range(2):
        n = 3 if lens is None else lens[b]
        steps = list(feed["x"][b, :n])
        final, outs = _cumsum(feed["s0"][b], steps[::-1] if direction else steps)
        finals.append(final)
        scans.append(np.concatenate([np.stack(outs) if outs else np.zeros((0, 2), F32), np.zeros((3 - n, 2), F32)]))
    _check_expected(_model(nodes, feed, ["s", "y"], opset=8), feed, [np.stack(finals), np.stack(scans)])
