"""Bad models and bad run-time inputs give a KilnError subclass whose message names the culprit."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=21, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def transpose_model(shape=(2, 3)) -> onnx.ModelProto:
    """X -> Transpose -> Y, with a weight W (an initializer large enough that truncation hits its bytes)."""
    w = numpy_helper.from_array(np.arange(4096, dtype=np.float32), "W")
    nodes = [helper.make_node("Transpose", ["X"], ["Y"], name="tr", perm=[1, 0]),
             helper.make_node("Identity", ["W"], ["Z"], name="id_w")]
    return _model(nodes, [_vi("X", list(shape))], [_vi("Y", list(shape[::-1])), _vi("Z", [4096])], [w])


def _raises(cls, fn, *names):
    with pytest.raises(cls) as info:
        fn()
    assert isinstance(info.value, kiln.KilnError)
    msg = str(info.value)
    for n in names:
        assert n in msg, f"{cls.__name__} message does not name {n!r}: {msg}"
    return info.value


# -- the model file ------------------------------------------------------------------------------
def test_valid_model_runs():  # the baseline every case below breaks in one way
    g = kiln.parse(transpose_model())
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = kiln.interpret(g, {"X": x})
    np.testing.assert_array_equal(out["Y"], x.T)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_file(tmp_path, keep):
    data = transpose_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    _raises(kiln.ModelFormatError, lambda: kiln.parse(path), "cut.onnx")


@pytest.mark.parametrize("blob", [b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)) * 4,
                                  b"not an onnx model at all"], ids=["ff", "huge-length", "bytes", "text"])
def test_corrupt_bytes(tmp_path, blob):
    path = tmp_path / "junk.onnx"
    path.write_bytes(blob)
    _raises(kiln.ModelFormatError, lambda: kiln.parse(path), "junk.onnx")
    _raises(kiln.ModelFormatError, lambda: kiln.parse(blob), "model bytes")


@pytest.mark.parametrize("field", [b"\x1a\x02tr", b"\x22\x09Transpose", b"\x0a\x04perm"],
                         ids=["node name", "op type", "attribute name"])
def test_invalid_utf8_in_a_string_field(field):  # protobuf hands such fields back as bytes, not str
    data = transpose_model().SerializeToString()
    assert data.count(field) == 1
    bad = data.replace(field, field[:2] + b"\xbd" * (len(field) - 2))
    _raises(kiln.ModelFormatError, lambda: kiln.parse(bad), "not valid UTF-8", "model.graph.node[0]")


def test_bytes_without_graph():
    blob = onnx.ModelProto(ir_version=8).SerializeToString()
    _raises(kiln.ModelFormatError, lambda: kiln.parse(blob), "no graph")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    _raises(kiln.ModelFormatError, lambda: kiln.parse(path), "empty.onnx", "empty")
    _raises(kiln.ModelFormatError, lambda: kiln.parse(b""), "empty")


def test_missing_file(tmp_path):
    _raises(kiln.ModelFormatError, lambda: kiln.parse(tmp_path / "nope.onnx"), "nope.onnx")
    _raises(kiln.ModelFormatError, lambda: kiln.parse(tmp_path), str(tmp_path))  # a folder is not a model


def test_wrong_argument_type():
    _raises(kiln.ModelFormatError, lambda: kiln.parse(12345), "int")


def _save_external(tmp_path) -> tuple:
    path = tmp_path / "ext.onnx"
    onnx.save_model(transpose_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    return path, tmp_path / "ext.data"


def test_external_data_loads(tmp_path):
    path, _ = _save_external(tmp_path)
    out = kiln.interpret(kiln.parse(path), {"X": np.zeros((2, 3), np.float32)})
    np.testing.assert_array_equal(out["Z"], np.arange(4096, dtype=np.float32))


def test_missing_external_data(tmp_path):
    path, data = _save_external(tmp_path)
    data.unlink()
    _raises(kiln.ModelFormatError, lambda: kiln.parse(path), "'W'", "ext.data", "missing")


def test_truncated_external_data(tmp_path):
    path, data = _save_external(tmp_path)
    data.write_bytes(data.read_bytes()[:100])
    _raises(kiln.ModelFormatError, lambda: kiln.parse(path), "'W'", "ext.data")


def test_external_data_outside_model_folder(tmp_path):
    m = transpose_model()
    w = next(t for t in m.graph.initializer if t.name == "W")
    onnx.external_data_helper.set_external_data(w, location="../../etc/passwd")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "evil.onnx"
    path.write_bytes(m.SerializeToString())
    _raises(kiln.ModelFormatError, lambda: kiln.parse(path), "'W'", "outside")


def test_external_data_from_bytes_needs_base_dir(tmp_path):
    path, _ = _save_external(tmp_path)
    blob = path.read_bytes()
    _raises(kiln.ModelFormatError, lambda: kiln.parse(blob), "base_dir")
    assert "Z" in kiln.interpret(kiln.parse(blob, base_dir=str(tmp_path)), {"X": np.zeros((2, 3), np.float32)})


def test_opset_too_new():
    m = transpose_model()
    m.opset_import[0].version = 10_000
    _raises(kiln.ModelFormatError, lambda: kiln.parse(m), "10000")


# -- the graph -----------------------------------------------------------------------------------
def _ident(i, o, name):
    return helper.make_node("Identity", [i], [o], name=name)


GRAPH_ERRORS = {
    # case: (nodes, inputs, outputs, initializers, names the message must contain)
    "cycle": ([helper.make_node("Concat", ["X", "b"], ["a"], name="cat", axis=0), _ident("a", "b", "loop_back"),
               _ident("a", "Y", "out")], ["X"], ["Y"], [], ["cycle", "cat", "loop_back"]),
    "self-loop": ([helper.make_node("Concat", ["X", "a"], ["a"], name="selfish", axis=0), _ident("a", "Y", "o")],
                  ["X"], ["Y"], [], ["selfish", "'a'"]),
    "dangling input": ([_ident("ghost", "Y", "reader")], ["X"], ["Y"], [], ["reader", "'ghost'"]),
    "dangling output": ([_ident("X", "Y", "n")], ["X"], ["Y", "nowhere"], [], ["'nowhere'"]),
    "duplicate output": ([_ident("X", "a", "first"), _ident("X", "a", "second"), _ident("a", "Y", "o")],
                         ["X"], ["Y"], [], ["second", "'a'"]),
    "output shadows input": ([_ident("X", "X", "clobber"), _ident("X", "Y", "o")], ["X"], ["Y"], [],
                             ["clobber", "'X'"]),
    "duplicate initializer": ([_ident("X", "Y", "n")], ["X"], ["Y"], ["W", "W"], ["'W'"]),
    "output shadows initializer": ([_ident("X", "W", "writes_w"), _ident("W", "Y", "o")], ["X"], ["Y"], ["W"],
                                   ["writes_w", "'W'"]),
}


@pytest.mark.parametrize("case", GRAPH_ERRORS, ids=list(GRAPH_ERRORS))
def test_graph_errors(case):
    nodes, ins, outs, inits, names = GRAPH_ERRORS[case]
    m = _model(nodes, [_vi(n, [2]) for n in ins], [_vi(n, None) for n in outs],
               [numpy_helper.from_array(np.ones(2, np.float32), n) for n in inits])
    _raises(kiln.GraphError, lambda: kiln.parse(m), *names)


def test_cycle_inside_subgraph():
    body = helper.make_graph([_ident("b", "a", "sub_a"), _ident("a", "b", "sub_b")], "then",
                             [], [_vi("a", [2])])
    other = helper.make_graph([_ident("X", "c", "else_c")], "else", [], [_vi("c", [2])])
    node = helper.make_node("If", ["C"], ["Y"], name="branch", then_branch=body, else_branch=other)
    m = _model([node], [_vi("C", [], TensorProto.BOOL), _vi("X", [2])], [_vi("Y", [2])])
    _raises(kiln.GraphError, lambda: kiln.parse(m), "cycle", "sub_")


def test_several_unsupported_ops_reported_at_once():
    nodes = [helper.make_node("NoSuchOp", ["X"], ["a"], name="mystery"),
             helper.make_node("Foo", ["a"], ["b"], name="custom", domain="com.example"),
             helper.make_node("RandomNormalLike", ["b"], ["c"], name="dice"),
             helper.make_node("Transpose", ["c"], ["Y"], name="fine", perm=[0])]
    m = _model(nodes, [_vi("X", [2])], [_vi("Y", [2])], domains=["com.example"])
    err = _raises(kiln.UnsupportedOpError, lambda: kiln.parse(m), "mystery", "custom", "dice", "com.example",
                  "deterministic")
    assert [u[0] for u in err.unsupported] == ["mystery", "custom", "dice"]
    assert [u[2] for u in err.unsupported] == ["NoSuchOp", "Foo", "RandomNormalLike"]
    assert "fine" not in str(err)


def test_unnamed_unsupported_node_still_identified():
    m = _model([helper.make_node("NoSuchOp", ["X"], ["Y"])], [_vi("X", [2])], [_vi("Y", [2])])
    err = _raises(kiln.UnsupportedOpError, lambda: kiln.parse(m), "NoSuchOp")
    assert err.unsupported[0][0]  # a generated label, never empty


def test_constant_without_value():
    m = _model([helper.make_node("Constant", [], ["c"], name="hollow"), _ident("c", "Y", "o")], [], [_vi("Y", None)])
    _raises(kiln.GraphError, lambda: kiln.parse(m), "hollow")


def _local_fn(name, body_nodes):
    return helper.make_function("local", name, ["a"], ["b"], body_nodes, [helper.make_opsetid("", 21)])


def _with_functions(nodes, functions):
    m = _model(nodes, [_vi("X", [2])], [_vi("Y", [2])], domains=["local"])
    m.functions.extend(functions)
    return m


@pytest.mark.parametrize("functions", [
    [_local_fn("Rec", [helper.make_node("Rec", ["a"], ["b"], domain="local")])],
    [_local_fn("Ping", [helper.make_node("Pong", ["a"], ["b"], domain="local")]),
     _local_fn("Pong", [helper.make_node("Ping", ["a"], ["b"], domain="local")])],
], ids=["self", "mutual"])
def test_recursive_function(functions):
    first = functions[0].name
    m = _with_functions([helper.make_node(first, ["X"], ["Y"], name="caller", domain="local")], functions)
    _raises(kiln.GraphError, lambda: kiln.parse(m), "caller", "calls itself", first)


def test_same_node_name_calling_a_function_twice():  # valid ONNX: node names need not be unique
    fn = _local_fn("Twice", [helper.make_node("Transpose", ["a"], ["t"], perm=[0]),
                             helper.make_node("Identity", ["t"], ["b"])])
    m = _with_functions([helper.make_node("Twice", ["X"], ["Z"], name="same", domain="local"),
                         helper.make_node("Twice", ["Z"], ["Y"], name="same", domain="local")], [fn])
    x = np.arange(2, dtype=np.float32)
    np.testing.assert_array_equal(kiln.interpret(kiln.parse(m), {"X": x})["Y"], x)


@pytest.mark.parametrize("where", ["initializer", "constant"])
def test_sparse_tensor_index_out_of_range(where):
    sp = helper.make_sparse_tensor(numpy_helper.from_array(np.ones(2, np.float32), "S"),
                                   numpy_helper.from_array(np.array([0, 99], np.int64), "S_idx"), [4])
    if where == "initializer":
        g = helper.make_graph([helper.make_node("Identity", ["S"], ["Y"], name="n")], "g", [], [_vi("Y", [4])])
        g.sparse_initializer.append(sp)
    else:
        g = helper.make_graph([helper.make_node("Constant", [], ["Y"], name="sparse_const", sparse_value=sp)], "g",
                              [], [_vi("Y", [4])])
    _raises(kiln.ModelFormatError, lambda: kiln.parse(helper.make_model(g)), "'S'" if where == "initializer"
            else "sparse")


def test_negative_dim_means_unknown():  # some old exporters write dim_value -1 for "any size"
    m = _model([helper.make_node("Identity", ["X"], ["Y"], name="n")], [_vi("X", [-1, 3])], [_vi("Y", [-1, 3])])
    g = kiln.parse(m)
    assert g.inputs[0].shape == (None, 3)
    assert kiln.interpret(g, {"X": np.zeros((5, 3), np.float32)})["Y"].shape == (5, 3)


# -- run-time inputs -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph():
    nodes = [helper.make_node("Transpose", ["X"], ["Y"], name="tr", perm=[1, 0]),
             helper.make_node("Identity", ["S"], ["Z"], name="id")]
    return kiln.parse(_model(nodes, [_vi("X", ["batch", 3]), _vi("S", [4], TensorProto.INT64)],
                             [_vi("Y", [3, "batch"]), _vi("Z", [4], TensorProto.INT64)]))


X = np.zeros((2, 3), np.float32)
S = np.zeros(4, np.int64)
BAD_FEEDS = {
    # case: (feed, names the message must contain)
    "unknown name": ({"X": X, "S": S, "x": X}, ["'x'", "'X'"]),
    "missing input": ({"X": X}, ["'S'"]),
    "nothing": (None, ["'X'"]),
    "too few positional": ([X], ["2 inputs", "X", "S"]),
    "wrong dtype": ({"X": X.astype(np.float64), "S": S}, ["'X'", "float", "double"]),
    "wrong int dtype": ({"X": X, "S": S.astype(np.int32)}, ["'S'", "int64", "int32"]),
    "wrong rank": ({"X": X[None], "S": S}, ["'X'", "rank 2"]),
    "scalar for tensor": ({"X": X, "S": np.int64(3)}, ["'S'", "rank 1"]),
    "wrong fixed dim": ({"X": np.zeros((2, 4), np.float32), "S": S}, ["'X'", "dimension 1", "3"]),
    "not an array": ({"X": [[0.0] * 3] * 2, "S": S}, ["'X'", "list"]),
    "bare array": (X, ["dict", "ndarray"]),
    "not a collection": (5, ["dict", "int"]),
    "string array": ({"X": X, "S": np.array(["a", "b", "c", "d"])}, ["'S'"]),
}


@pytest.mark.parametrize("case", BAD_FEEDS, ids=list(BAD_FEEDS))
def test_bad_inputs(graph, case):
    feed, names = BAD_FEEDS[case]
    _raises(kiln.InputError, lambda: kiln.interpret(graph, feed), *names)


@pytest.mark.parametrize("batch", [1, 5])
def test_symbolic_dim_accepts_any_size(graph, batch):
    x = np.arange(batch * 3, dtype=np.float32).reshape(batch, 3)
    out = kiln.interpret(graph, {"X": x, "S": S})
    np.testing.assert_array_equal(out["Y"], x.T)


def test_torch_input_checked_too(graph):
    import torch
    _raises(kiln.InputError, lambda: kiln.interpret(graph, {"X": torch.zeros(2, 3, dtype=torch.float16),
                                                            "S": torch.zeros(4, dtype=torch.int64)}), "'X'")
