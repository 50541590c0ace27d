"""The alias analysis (kiln/engine/aliases.py): which values share storage, from the ops' ``view`` trait and the
Concat ``in_place`` marks; and every alias it names is one a run shows (storage identity; the arena places by it)."""
from __future__ import annotations

import torch
from onnx import TensorProto, helper

import kiln
from kiln.engine.aliases import is_view, storage_roots
from kiln.engine.arena import Recorder


def _graph(nodes, out="y"):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          [helper.make_tensor("shape", TensorProto.INT64, [1], [32]),
                           helper.make_tensor("shape2", TensorProto.INT64, [2], [8, 4])])
    return kiln.parse(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _ids(g):
    return {o.name: o.id for n in g.nodes for o in n.outputs if o is not None}


def test_views_chain_to_their_source():
    g = _graph([helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Reshape", ["a", "shape"], ["r"]),
                helper.make_node("Reshape", ["r", "shape2"], ["r2"]), helper.make_node("Neg", ["r2"], ["y"])])
    ids = _ids(g)
    assert storage_roots(g) == {ids["r"]: ids["a"], ids["r2"]: ids["a"]}
    assert [is_view(n) for n in g.nodes] == [False, True, True, False]


def test_concat_inputs_in_place_live_in_its_output():
    g = _graph([helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
                helper.make_node("Concat", ["a", "b"], ["c"], axis=0), helper.make_node("Abs", ["c"], ["y"])])
    assert storage_roots(g) == {}
    next(n for n in g.nodes if n.op_type == "Concat").attrs["in_place"] = [1]
    ids = _ids(g)
    assert storage_roots(g) == {ids["b"]: ids["c"]}


def test_every_alias_named_is_one_a_run_shows():
    g = _graph([helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Reshape", ["a", "shape"], ["r"]),
                helper.make_node("Reshape", ["r", "shape2"], ["r2"]), helper.make_node("Neg", ["r2"], ["b"]),
                helper.make_node("Add", ["b", "r2"], ["y"])])
    engine = kiln.build(g, kiln.BuilderConfig(device="cpu", optimization_level=0))
    program = engine.program
    recorder = Recorder()
    env = {v.id: torch.randn(4, 8) for v in program.graph.inputs}
    program.run(env, hook=recorder)
    roots = storage_roots(program.graph, engine.registry)
    assert roots  # the engine keeps the views
    for vid, root in roots.items():
        a, b = recorder.tensors[vid], recorder.tensors[root]
        assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_a_concat_written_in_place_into_another_resolves_to_the_outer():
    g = _graph([helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
                helper.make_node("Concat", ["a", "b"], ["c"], axis=0), helper.make_node("Abs", ["x"], ["d"]),
                helper.make_node("Concat", ["c", "d"], ["e"], axis=0), helper.make_node("Abs", ["e"], ["y"])])
    concats = [n for n in g.nodes if n.op_type == "Concat"]
    concats[0].attrs["in_place"] = [1]
    concats[1].attrs["in_place"] = [0]
    ids = _ids(g)
    assert storage_roots(g) == {ids["b"]: ids["e"], ids["c"]: ids["e"]}
