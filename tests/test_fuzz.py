"""Fuzz the parser and interpreter: mutated models either work or raise a KilnError, nothing else.

Seeds are small valid models (MLP, conv net, shape ops with a symbolic dim, control flow with a
model-local function). Mutations are byte-level (flip, truncate, insert) on the serialized proto
and structural on the proto (drop/swap nodes, rename values, change attributes, dims, element
types, op types, opsets). A kernel's own failure is wrapped by the interpreter as KernelError;
anything else escaping (IndexError, KeyError, TypeError, RecursionError, ...) is a bug in the core.
"""
from __future__ import annotations

import signal
import warnings

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import kiln

F = TensorProto.FLOAT
HARD_DEADLINE_S = 20  # an example that runs this long is a hang; normal ones take milliseconds

# Hypothesis' own deadline is a timing assert (flaky on a loaded CI runner) and cannot stop a real hang;
# a SIGALRM per example can. derandomize: the same examples on every run, so CI is reproducible.
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), functions=(), domains=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)] +
                             [helper.make_opsetid(d, 1) for d in domains], functions=list(functions))


def seed_mlp():
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "B1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["Y"], name="mm2")]
    inits = [_init("W1", np.full((4, 3), 0.5, np.float32)), _init("W2", np.ones((3, 2), np.float32))]
    m = _model(nodes, [_vi("X", ["batch", 4])], [_vi("Y", ["batch", 2])], inits)
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(  # B1 = [0, 1, 2], stored sparse
        _init("B1", np.array([1, 2], np.float32)), _init("B1_idx", np.array([1, 2], np.int64)), [3]))
    return m


def seed_conv():
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[1, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "X2"], ["s"], name="residual"),
             helper.make_node("Reshape", ["s", "shape"], ["flat"], name="flatten"),
             helper.make_node("Transpose", ["flat"], ["Y"], name="tr", perm=[1, 0])]
    inits = [_init("W", np.ones((2, 2, 3, 3), np.float32) / 9), _init("B", np.zeros(2, np.float32)),
             _init("shape", np.array([1, -1], np.int64))]
    return _model(nodes, [_vi("X", [1, 2, 5, 5]), _vi("X2", [1, 2, 5, 5])], [_vi("Y", [50, 1])], inits)


def seed_shapes():
    nodes = [helper.make_node("Transpose", ["X"], ["t"], name="tr", perm=[0, 2, 1]),
             helper.make_node("Concat", ["t", "t"], ["c"], name="cat", axis=1),
             helper.make_node("Slice", ["c", "starts", "ends", "axes"], ["s"], name="slice"),
             helper.make_node("Unsqueeze", ["s", "ax0"], ["u"], name="unsq"),
             helper.make_node("Squeeze", ["u", "ax0"], ["q"], name="sq"),
             helper.make_node("Reshape", ["q", "shape"], ["Y"], name="reshape", allowzero=0),
             helper.make_node("Shape", ["X"], ["S"], name="shape_of", start=0)]
    inits = [_init("starts", np.array([1], np.int64)), _init("ends", np.array([7], np.int64)),
             _init("axes", np.array([1], np.int64)), _init("ax0", np.array([0], np.int64)),
             _init("shape", np.array([0, -1], np.int64))]
    return _model(nodes, [_vi("X", ["batch", 3, 4])],
                  [_vi("Y", ["batch", 18]), _vi("S", [3], TensorProto.INT64)], inits)


def seed_control():
    swap = helper.make_function("local", "Swap", ["a"], ["b"],
                                [helper.make_node("Transpose", ["a"], ["b"], perm=[1, 0])],
                                [helper.make_opsetid("", 21)])
    then_g = helper.make_graph([helper.make_node("Swap", ["X"], ["t_out"], name="call", domain="local")],
                               "then", [], [_vi("t_out", [3, 2])])
    else_g = helper.make_graph([helper.make_node("Transpose", ["k"], ["e_out"], name="tr_k", perm=[1, 0])],
                               "else", [], [_vi("e_out", [3, 2])])
    nodes = [helper.make_node("Constant", [], ["k"], name="const",
                              value=_init("kv", np.arange(6, dtype=np.float32).reshape(2, 3))),
             helper.make_node("If", ["C"], ["Y"], name="branch", then_branch=then_g, else_branch=else_g),
             helper.make_node("Identity", ["Y"], ["Z"], name="ident")]
    return _model(nodes, [_vi("X", [2, 3]), _vi("C", [], TensorProto.BOOL)], [_vi("Z", [3, 2])],
                  functions=[swap], domains=["local"])


SEEDS = [seed_mlp(), seed_conv(), seed_shapes(), seed_control()]
SEED_BYTES = [m.SerializeToString() for m in SEEDS]


# -- running a candidate ---------------------------------------------------------------------------
class Hang(BaseException):  # BaseException: the interpreter's wrapping of kernel failures must not catch it
    pass


def _on_alarm(signum, frame):
    raise Hang(f"one example ran longer than {HARD_DEADLINE_S}s")


_NP = {kiln.DType.FLOAT: np.float32, kiln.DType.DOUBLE: np.float64, kiln.DType.FLOAT16: np.float16,
       kiln.DType.INT64: np.int64, kiln.DType.INT32: np.int32, kiln.DType.INT8: np.int8, kiln.DType.UINT8: np.uint8,
       kiln.DType.INT16: np.int16, kiln.DType.UINT16: np.uint16}


def _feed_for(graph: kiln.Graph) -> dict:
    """An input per graph input, shaped as declared (symbolic/unknown dims -> 2; huge dims capped)."""
    feed = {}
    for v in graph.inputs:
        t = v.type
        if not isinstance(t, kiln.TensorType) or t.dtype is None:
            feed[v.name] = np.zeros((2, 3), np.float32)
            continue
        shape = (2, 3) if t.shape is None else tuple(d if isinstance(d, int) and 0 <= d <= 16 else 2
                                                      for d in t.shape)
        n = int(np.prod(shape))
        try:
            if t.dtype is kiln.DType.BOOL:
                feed[v.name] = (np.arange(n) % 2 == 0).reshape(shape)
            else:
                feed[v.name] = (np.arange(n) % 7).reshape(shape).astype(_NP.get(t.dtype, np.float32))
        except (TypeError, ValueError):
            feed[v.name] = np.zeros(shape, np.float32)
    return feed


def run_candidate(model) -> None:
    """parse + interpret; any exception other than a KilnError fails the test."""
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(HARD_DEADLINE_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                graph = kiln.parse(model)
                kiln.interpret(graph, _feed_for(graph))
            except kiln.KilnError as e:
                str(e)  # the message itself must be formattable
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("i", range(len(SEEDS)), ids=["mlp", "conv", "shapes", "control"])
def test_seeds_are_valid(i):  # mutations start from models that pass the checker and run right in Kiln
    from onnx.reference import ReferenceEvaluator
    onnx.checker.check_model(SEEDS[i])  # no full_check: shape inference types sparse initializers as sparse
    graph = kiln.parse(SEEDS[i])
    feed = _feed_for(graph)
    got = kiln.interpret(graph, feed)
    dense = onnx.ModelProto()
    dense.CopyFrom(SEEDS[i])
    for sp in dense.graph.sparse_initializer:  # the reference evaluator reads dense initializers only
        values, idx = numpy_helper.to_array(sp.values), numpy_helper.to_array(sp.indices)
        full = np.zeros(tuple(sp.dims), values.dtype)
        full.flat[idx] = values
        dense.graph.initializer.append(_init(sp.values.name, full))
    del dense.graph.sparse_initializer[:]
    want = ReferenceEvaluator(dense).run(None, feed)
    for o, w in zip(SEEDS[i].graph.output, want):
        np.testing.assert_allclose(got[o.name], w, rtol=1e-6, err_msg=o.name)


# -- byte mutations ------------------------------------------------------------------------------
byte_edit = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 16)),
)


def mutate_bytes(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, pos, arg in edits:
        if not b:
            break
        pos %= len(b)
        if kind == "flip":
            b[pos] ^= arg
        elif kind == "truncate":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = arg
        else:
            del b[pos:pos + arg]
    return bytes(b)


@settings(FUZZ, max_examples=80)
@given(seed=st.integers(0, len(SEEDS) - 1), edits=st.lists(byte_edit, min_size=1, max_size=4))
def test_byte_mutations(seed, edits):
    run_candidate(mutate_bytes(SEED_BYTES[seed], edits))


# -- structural mutations ------------------------------------------------------------------------
INTERESTING_INTS = [-(2**63), -(2**31), -7, -2, -1, 0, 1, 2, 3, 5, 64, 2**31 - 1, 2**40]
OP_TYPES = ["Relu", "Add", "MatMul", "Conv", "Reshape", "Transpose", "Concat", "If", "Loop", "Identity",
            "Constant", "Slice", "NoSuchOp", "Swap", ""]


def _graphs(model: onnx.ModelProto):
    """Every GraphProto (the main graph and all subgraphs), and every function's node list holder."""
    out = []

    def walk(g):
        out.append(g)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sg in a.graphs:
                    walk(sg)
    walk(model.graph)
    out.extend(model.functions)
    return out


def _value_infos(g):
    if isinstance(g, onnx.FunctionProto):
        return []
    return list(g.input) + list(g.output) + list(g.value_info)


def _names(g) -> list[str]:
    names = [x for n in g.node for x in list(n.input) + list(n.output)]
    if not isinstance(g, onnx.FunctionProto):
        names += [v.name for v in _value_infos(g)] + [t.name for t in g.initializer]
    return names or ["X"]


def _mutate_attr(a: onnx.AttributeProto, k: int, v: int) -> None:
    T = onnx.AttributeProto
    new_int = INTERESTING_INTS[v % len(INTERESTING_INTS)]
    choice = k % 6
    if choice == 0 and a.type == T.INT:
        a.i = new_int
    elif choice == 0 and a.type == T.INTS:
        if a.ints:
            a.ints[v % len(a.ints)] = new_int
        else:
            a.ints.append(new_int)
    elif choice == 0 and a.type == T.FLOAT:
        a.f = [float("nan"), float("inf"), -1.0, 0.0, 1e30][v % 5]
    elif choice == 1 and a.type == T.INTS:  # change the list's length
        if a.ints and v % 2:
            del a.ints[-1]
        else:
            a.ints.append(new_int)
    elif choice == 2:  # change the declared type, leaving the payload of the old one
        a.type = [T.INT, T.INTS, T.FLOAT, T.FLOATS, T.STRING, T.TENSOR, T.GRAPH, T.UNDEFINED, T.GRAPHS][v % 9]
    elif choice == 3:
        a.name = ["perm", "axis", "pads", "value", "then_branch", "body", "bogus", ""][v % 8]
    elif choice == 4 and a.type == T.TENSOR:
        a.t.data_type = v % 30
    elif choice == 4 and a.type == T.GRAPH:
        if a.g.node:
            del a.g.node[v % len(a.g.node)]
    else:
        a.ref_attr_name = "missing_ref" if v % 2 else ""


def mutate_proto(model: onnx.ModelProto, edits) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for kind, gi, i, j, v in edits:
        graphs = _graphs(m)
        g = graphs[gi % len(graphs)]
        nodes, vis = g.node, _value_infos(g)
        names = _names(g)
        if kind == "drop_node" and nodes:
            del nodes[i % len(nodes)]
        elif kind == "swap_nodes" and len(nodes) > 1:
            a, b = i % len(nodes), j % len(nodes)
            na, nb = onnx.NodeProto(), onnx.NodeProto()
            na.CopyFrom(nodes[a])
            nb.CopyFrom(nodes[b])
            nodes[a].CopyFrom(nb)
            nodes[b].CopyFrom(na)
        elif kind == "rename_input" and nodes:
            n = nodes[i % len(nodes)]
            if n.input:
                n.input[j % len(n.input)] = (names + ["", "nonexistent"])[v % (len(names) + 2)]
        elif kind == "rename_output" and nodes:
            n = nodes[i % len(nodes)]
            if n.output:
                n.output[j % len(n.output)] = (names + ["", "fresh"])[v % (len(names) + 2)]
        elif kind == "rename_value" and vis:
            vis[i % len(vis)].name = (names + ["", "nonexistent"])[v % (len(names) + 2)]
        elif kind == "attr" and nodes:
            n = nodes[i % len(nodes)]
            if n.attribute:
                _mutate_attr(n.attribute[j % len(n.attribute)], v, v // 7 + j)
        elif kind == "drop_attr" and nodes:
            n = nodes[i % len(nodes)]
            if n.attribute:
                del n.attribute[j % len(n.attribute)]
        elif kind == "dim" and vis:
            t = vis[i % len(vis)].type.tensor_type
            dims = t.shape.dim
            if dims:
                d = dims[j % len(dims)]
                if v % 4 == 0:
                    d.dim_param = "sym"
                elif v % 4 == 1:
                    d.Clear()
                else:
                    d.dim_value = INTERESTING_INTS[v % len(INTERESTING_INTS)]
            elif v % 2:
                t.shape.dim.add().dim_value = 3
            else:
                t.ClearField("shape")
        elif kind == "elem_type" and vis:
            vis[i % len(vis)].type.tensor_type.elem_type = v % 30
        elif kind == "init" and not isinstance(g, onnx.FunctionProto) and (g.initializer or g.sparse_initializer):
            sparse = [part for sp in g.sparse_initializer for part in (sp.values, sp.indices)]
            tensors = list(g.initializer) + sparse
            t = tensors[i % len(tensors)]
            if v % 3 == 0:
                t.data_type = j % 30
            elif v % 3 == 1 and t.dims:
                t.dims[j % len(t.dims)] = INTERESTING_INTS[v % len(INTERESTING_INTS)]
            else:
                t.dims.append(j % 4)
        elif kind == "op_type" and nodes:
            n = nodes[i % len(nodes)]
            n.op_type = OP_TYPES[v % len(OP_TYPES)]
            n.domain = ["", "", "local", "ai.onnx", "com.unknown"][j % 5]
        elif kind == "opset" and m.opset_import:
            m.opset_import[i % len(m.opset_import)].version = [1, 6, 11, 13, 18, 21, 22, 24, 0, -1, 999][v % 11]
        elif kind == "io_list" and not isinstance(g, onnx.FunctionProto):
            target = [g.input, g.output][i % 2]
            if v % 2 and len(target):
                del target[j % len(target)]
            else:
                target.add().CopyFrom(_vi(names[j % len(names)], [2]))
    return m


proto_edit = st.tuples(
    st.sampled_from(["drop_node", "swap_nodes", "rename_input", "rename_output", "rename_value", "attr",
                     "drop_attr", "dim", "elem_type", "init", "op_type", "opset", "io_list"]),
    st.integers(0, 7), st.integers(0, 63), st.integers(0, 63), st.integers(0, 1000))


@settings(FUZZ, max_examples=150)
@given(seed=st.integers(0, len(SEEDS) - 1), edits=st.lists(proto_edit, min_size=1, max_size=3))
def test_structural_mutations(seed, edits):
    m = mutate_proto(SEEDS[seed], edits)
    run_candidate(m)  # as a ModelProto ...
    try:
        data = m.SerializeToString()
    except Exception:  # noqa: BLE001 - protobuf refuses some mutated protos; nothing Kiln sees
        return
    run_candidate(data)  # ... and round-tripped through bytes, as a file would be
