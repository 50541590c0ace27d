"""The IR by hand: use-def links under mutation, toposort, verify, the printer, symbolic dims from the parser."""
from __future__ import annotations

import pytest
import torch
from onnx import TensorProto, helper

import kiln
from kiln import DType, Graph, GraphError, Node, TensorType, Value
from kiln.ir.graph import outer_reads

F32 = DType.FLOAT


def t(*shape):
    return TensorType(F32, shape)


def chain():
    """x -> Add(x, c) -> a -> Relu -> b ; returns (graph, x, c, a, b, add, relu)."""
    g = Graph("g")
    x = g.add_input(Value("x", t("batch", 3)))
    c = g.add_constant("c", torch.ones(3))
    a, b = Value("a", t("batch", 3)), Value("b", t("batch", 3))
    add = g.append(Node("Add", [x, c], [a], name="add"))
    relu = g.append(Node("Relu", [a], [b], name="relu"))
    g.outputs.append(b)
    return g, x, c, a, b, add, relu


# -- use-def links ---------------------------------------------------------------------------------
def test_links_after_construction():
    g, x, c, a, b, add, relu = chain()
    assert x.uses == [(add, 0)] and c.uses == [(add, 1)] and a.uses == [(relu, 0)] and b.uses == []
    assert (a.producer, a.index) == (add, 0) and x.producer is None and c.is_const and not x.is_const
    assert add.graph is g and relu.graph is g
    g.verify()


def test_set_input_moves_the_use():
    g, x, c, a, b, add, relu = chain()
    relu.set_input(0, x)
    assert a.uses == [] and sorted(x.uses, key=lambda u: u[1]) == [(add, 0), (relu, 0)]
    relu.set_input(0, None)  # an omitted optional input
    assert x.uses == [(add, 0)] and relu.inputs == [None]


def test_replace_all_uses_includes_graph_outputs_and_subgraphs():
    g, x, c, a, b, add, relu = chain()
    then = Graph("then", parent=g)
    y = Value("y", t("batch", 3))
    inner = then.append(Node("Identity", [a], [y], name="inner"))  # reads the outer value a
    then.outputs.append(y)
    z = Value("z", t("batch", 3))
    cond = g.add_input(Value("cond", TensorType(DType.BOOL, ())))
    g.append(Node("If", [cond], [z], {"then_branch": then, "else_branch": then}, name="if"))
    g.outputs.append(a)
    g.replace_all_uses(a, x)
    assert a.uses == [] and (relu, 0) in x.uses and (inner, 0) in x.uses
    assert inner.inputs == [x] and g.outputs == [b, x]


def test_remove_refuses_a_used_node_and_unlinks_a_dead_one():
    g, x, c, a, b, add, relu = chain()
    with pytest.raises(GraphError, match="add.*'a' is still used"):
        g.remove(add)
    relu.set_input(0, x)
    g.remove(add)
    assert add not in g.nodes and add.graph is None
    assert x.uses == [(relu, 0)] and c.uses == [] and a.producer is None
    g.verify()


def test_a_value_has_one_producer():
    g, x, c, a, b, add, relu = chain()
    with pytest.raises(GraphError, match="'a' is produced by both 'add' and 'again'"):
        Node("Neg", [x], [a], name="again")


def test_insert_before_and_queries():
    g, x, c, a, b, add, relu = chain()
    d = Value("d", t("batch", 3))
    neg = g.insert_before(relu, Node("Neg", [a], [d], name="neg"))
    assert [n.name for n in g.nodes] == ["add", "neg", "relu"] and neg.graph is g
    assert [v.name for v in g.values()] == ["x", "c", "a", "d", "b"]
    assert Node("Neg", [], []).label == "<Neg>" and neg.label == "neg"


# -- toposort --------------------------------------------------------------------------------------
def test_toposort_orders_an_out_of_order_graph():
    g = Graph("g")
    x = g.add_input(Value("x", t(2)))
    vals = [Value(f"v{i}", t(2)) for i in range(4)]
    n3 = Node("Add", [vals[1], vals[2]], [vals[3]], name="n3")
    n1 = Node("Neg", [vals[0]], [vals[1]], name="n1")
    n2 = Node("Abs", [vals[0]], [vals[2]], name="n2")
    n0 = Node("Relu", [x], [vals[0]], name="n0")
    for n in (n3, n1, n2, n0):
        g.append(n)
    g.outputs.append(vals[3])
    with pytest.raises(GraphError, match="topological order"):
        g.verify()
    g.toposort()
    order = [n.name for n in g.nodes]
    assert order[0] == "n0" and order[-1] == "n3" and set(order[1:3]) == {"n1", "n2"}
    g.verify()


def test_toposort_counts_reads_from_inside_subgraphs():
    g = Graph("g")
    cond = g.add_input(Value("cond", TensorType(DType.BOOL, ())))
    x = g.add_input(Value("x", t(2)))
    late = Value("late", t(2))
    body = Graph("body", parent=g)
    y = Value("y", t(2))
    body.append(Node("Identity", [late], [y], name="reads_late"))
    body.outputs.append(y)
    out = Value("out", t(2))
    g.append(Node("If", [cond], [out], {"then_branch": body, "else_branch": body}, name="if"))
    g.append(Node("Neg", [x], [late], name="makes_late"))
    g.outputs.append(out)
    assert outer_reads(body) == [late]
    g.toposort()
    assert [n.name for n in g.nodes] == ["makes_late", "if"]
    g.verify()
    assert [n.name for n in g.all_nodes()] == ["makes_late", "if", "reads_late", "reads_late"]


def test_toposort_detects_cycles():
    g = Graph("g")
    x = g.add_input(Value("x", t(2)))
    a, b = Value("a", t(2)), Value("b", t(2))
    g.append(Node("Add", [x, b], [a], name="first"))
    g.append(Node("Neg", [a], [b], name="second"))
    g.outputs.append(b)
    with pytest.raises(GraphError, match="cycle through node\\(s\\) first, second"):
        g.toposort()
    selfish = Graph("s")
    v = Value("v", t(2))
    selfish.append(Node("Neg", [v], [v], name="me"))
    with pytest.raises(GraphError, match="node me .*reads its own output 'v'"):
        selfish.toposort()


# -- verify ----------------------------------------------------------------------------------------
def _dup_name(g, x, c, a, b, add, relu):
    b.name = "a"


def _dangling(g, x, c, a, b, add, relu):
    relu.set_input(0, Value("ghost", t(3)))


def _broken_use(g, x, c, a, b, add, relu):
    a.uses.clear()


def _wrong_producer(g, x, c, a, b, add, relu):
    a.index = 1


def _output_not_computed(g, x, c, a, b, add, relu):
    g.outputs.append(Value("nowhere", t(3)))


def _out_of_order(g, x, c, a, b, add, relu):
    g.nodes.reverse()


def _bad_subgraph(g, x, c, a, b, add, relu):
    sub = Graph("sub", parent=g)
    y = Value("y", t(3))
    sub.append(Node("Identity", [Value("stranger", t(3))], [y], name="lost"))
    sub.outputs.append(y)
    g.append(Node("If", [x], [Value("z")], {"then_branch": sub}, name="if"))


VERIFY_FAILURES = [  # (break the graph, message pattern)
    (_dup_name, "value name 'a' defined twice"),
    (_dangling, "node relu \\(Relu\\) reads 'ghost', which nothing in graph 'g' defines"),
    (_broken_use, "use-def link broken: 'a' -> relu"),
    (_wrong_producer, "output 'a' of node add has a wrong producer link"),
    (_output_not_computed, "output 'nowhere' is not computed"),
    (_out_of_order, "node relu \\(Relu\\) reads 'a' before it is computed"),
    (_bad_subgraph, "node lost \\(Identity\\) reads 'stranger', which nothing in graph 'sub' defines"),
]


@pytest.mark.parametrize("breaker,pattern", VERIFY_FAILURES, ids=[f.__name__[1:] for f, _ in VERIFY_FAILURES])
def test_verify_failures(breaker, pattern):
    parts = chain()
    parts[0].verify()
    breaker(*parts)
    with pytest.raises(GraphError, match=pattern):
        parts[0].verify()


# -- printer ---------------------------------------------------------------------------------------
def test_printer():
    g, x, c, a, b, add, relu = chain()
    add.attrs.update(alpha=0.5, big=list(range(20)), w=torch.arange(3.0))
    body = Graph("then", parent=g)
    y = Value("y", TensorType(F32, None))
    body.append(Node("Identity", [b], [y]))
    body.outputs.append(y)
    g.append(Node("If", [x], [Value("z", TensorType())], {"then_branch": body}, name="if", domain="com.x"))
    assert str(g).splitlines() == [
        "graph g(%x: f32[batch,3]) {",
        "  const %c: f32[3]",
        "  %a: f32[batch,3] = Add(%x, %c) {alpha=0.5, big=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ...], "
        "w=tensor([0.0, 1.0, 2.0])}  # add",
        "  %b: f32[batch,3] = Relu(%a)  # relu",
        "  %z: ?[*] = com.x::If(%x) {then_branch=<graph then>}  # if",
        "    then_branch:",
        "      graph then() {",
        "        %y: f32[*] = Identity(%b)",
        "        return %y",
        "      }",
        "  return %b",
        "}",
    ]


@pytest.mark.parametrize("ty,text", [
    (TensorType(F32, ("batch", None, 3)), "f32[batch,?,3]"),
    (TensorType(DType.INT64, ()), "i64[]"),
    (TensorType(None, None), "?[*]"),
    (kiln.SequenceType(TensorType(DType.BOOL, (2,))), "seq<bool[2]>"),
    (kiln.OptionalType(None), "optional<?>"),
])
def test_type_text(ty, text):
    assert str(ty) == text


def test_parse_keeps_symbolic_dims():
    m = helper.make_model(helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["y"], name="tr", perm=[1, 0])], "sym",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "batch"])]))
    g = kiln.parse(m)
    assert g.inputs[0].shape == ("batch", 3) and g.inputs[0].dtype is F32
    assert g.outputs[0].shape == (3, "batch")
    assert isinstance(g.inputs[0].type, TensorType) and not g.inputs[0].type.is_static
    assert "graph sym(%x: f32[batch,3])" in str(g)
