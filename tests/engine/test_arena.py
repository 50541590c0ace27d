"""Dynamic tensor memory at run time (kiln/engine/arena.py) and Concat elimination
(kiln/builder/concat_in_place.py): placed runs give the same results as unplaced ones and as the oracle."""
from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.engine.aliases import storage_roots
from kiln.engine.arena import Recorder, plan_layout
from kiln.plugin import PluginLibrary
from kiln.tune import export_choices

RNG = np.random.default_rng(0)


def _w(name, *shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.3, name)


def concat_mlp() -> onnx.ModelProto:
    """Three branches (each Linear + Relu, from different inputs) concatenated, a long-lived Reshape view,
    then two more Linears: placed tensors, a view that outlives its producer's next layers, a Concat."""
    nodes, inits = [], []
    for i in range(3):
        inits += [_w(f"W{i}", 16, 8), _w(f"b{i}", 8)]
        nodes += [helper.make_node("MatMul", [f"x{i}", f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
    inits += [_w("W3", 24, 24), _w("b3", 24), _w("W4", 24, 24),
              numpy_helper.from_array(np.array([-1, 6, 4], np.int64), "shape3"),
              numpy_helper.from_array(np.array([-1, 24], np.int64), "shape2")]
    nodes += [helper.make_node("Concat", ["r0", "r1", "r2"], ["c"], axis=-1),
              helper.make_node("MatMul", ["c", "W3"], ["h"]),
              helper.make_node("Add", ["h", "b3"], ["h1"]),
              helper.make_node("Reshape", ["h1", "shape3"], ["view"]),
              helper.make_node("Tanh", ["h1"], ["t"]),
              helper.make_node("MatMul", ["t", "W4"], ["u"]),
              helper.make_node("Reshape", ["view", "shape2"], ["back"]),
              helper.make_node("Add", ["u", "back"], ["y"])]
    inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["batch", 16]) for i in range(3)]
    g = helper.make_graph(nodes, "concat_mlp", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _build_with_torch_tactics(model, tmp_path, plugins=None, **cfg) -> kiln.Engine:
    """On CPU the default oneDNN Conv/Linear tactics keep their own buffers; replay the op's own kernel
    (which writes into the arena) for every layer that has a choice."""
    first = kiln.build(model, kiln.BuilderConfig(device="cpu", **cfg), plugins=plugins)
    data = export_choices(first)
    data["layers"] = {k: {"name": "torch", "params": {}} for k in data["layers"]}
    replay = tmp_path / "torch.json"
    replay.write_text(json.dumps(data))
    return kiln.build(model, kiln.BuilderConfig(device="cpu", tactic_replay=str(replay), **cfg), plugins=plugins)


def _feeds(batch):
    return {f"x{i}": RNG.standard_normal((batch, 16)).astype(np.float32) for i in range(3)}


def test_placed_runs_match_the_oracle_and_the_allocator(tmp_path):
    model = concat_mlp()
    engine = _build_with_torch_tactics(model, tmp_path)
    assert engine.report.fusions.get("concat_in_place") == 3
    concat = [layer for layer in engine.report.layers if layer.op == "Concat"]
    assert concat and "3/3 inputs in place" in concat[0].kernel
    ref = ReferenceEvaluator(model)
    placed, plain = engine.create_execution_context(), engine.create_execution_context(arena=False)
    for batch in (4, 1, 4, 7, 4):  # one layout per shape, reused when a shape comes back
        feeds = _feeds(batch)
        want = ref.run(None, feeds)[0]
        for _ in range(2):  # the first run at a shape records, the second runs placed
            got = placed.infer(feeds)["y"]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(got, plain.infer(feeds)["y"])
    stats = placed.memory_stats()
    assert stats["placed_tensors"] >= 4 and stats["concat_in_place"] == 1 and stats["declined"] == []
    assert stats["arena_bytes"] <= stats["arena_allocated_bytes"]
    assert plain.memory_stats() is None


def test_in_place_marks_and_arena_survive_save_and_load(tmp_path):
    engine = _build_with_torch_tactics(concat_mlp(), tmp_path)
    path = tmp_path / "e.kiln"
    engine.save(path)
    loaded = kiln.Engine.load(path)
    assert loaded.header["arena"] is True
    feeds = _feeds(3)
    ctx = loaded.create_execution_context()
    ctx.infer(feeds)
    np.testing.assert_array_equal(ctx.infer(feeds)["y"], engine.create_execution_context(arena=False).infer(feeds)["y"])
    assert ctx.memory_stats()["concat_in_place"] == 1


def test_build_plan_sizes_the_arena_with_a_profile(tmp_path):
    profile = kiln.Profile.of(**{f"x{i}": ((1, 16), (4, 16), (8, 16)) for i in range(3)})
    model = concat_mlp()
    engine = _build_with_torch_tactics(model, tmp_path, profiles=(profile,))
    assert engine.arena_bytes == engine.report.memory["arena_bytes"] > 0
    ctx = engine.create_execution_context()
    for batch in (8, 8, 2, 2):
        feeds = _feeds(batch)
        np.testing.assert_allclose(ctx.infer(feeds)["y"], ReferenceEvaluator(model).run(None, feeds)[0],
                                   rtol=1e-4, atol=1e-4)
    assert not ctx.notes  # every layout fit in the arena planned at build


def test_oneDNN_layers_keep_their_buffers_and_say_so():
    engine = kiln.build(concat_mlp(), kiln.BuilderConfig(device="cpu", optimization_level=1))
    ctx = engine.create_execution_context()
    feeds = _feeds(2)
    ctx.infer(feeds)
    ctx.infer(feeds)
    stats = ctx.memory_stats()
    if any(t.startswith("onednn") for t in engine.tactics.values()):
        assert stats["allocator_ops"].get("Linear", 0) >= 1
    assert stats["placed_tensors"] + stats["allocator_tensors"] >= 5
    rejected = [r for r in engine.report.rejections if r["rule"] == "concat_in_place"]
    if any(t.startswith("onednn") for t in engine.tactics.values()):
        assert rejected and "cannot write into a given buffer" in rejected[0]["reason"]


def test_data_dependent_shapes_use_no_arena():
    g = helper.make_graph([helper.make_node("NonZero", ["x"], ["nz"]),
                           helper.make_node("Cast", ["nz"], ["f"], to=TensorProto.FLOAT),
                           helper.make_node("Relu", ["f"], ["y"])], "nz",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    engine = kiln.build(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                        kiln.BuilderConfig(device="cpu"))
    assert engine.header["arena"] is False
    assert any("data-dependent" in n for n in engine.report.notes)
    ctx = engine.create_execution_context()
    for x in ([0, 1, 0, 2], [1, 1, 1, 0]):
        y = ctx.infer({"x": np.array(x, np.float32)})["y"]
        np.testing.assert_array_equal(y, np.array(np.nonzero(np.array(x))).astype(np.float32))
    assert ctx.memory_stats() is None


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def views_model() -> onnx.ModelProto:
    """Two Linears concatenated (in place), Reshape / Flatten / Squeeze views (one outliving its source's other
    readers) and a graph output that is a view of an intermediate."""
    nodes, inits = [], []
    for i in range(2):
        inits += [_w(f"W{i}", 16, 8), _w(f"b{i}", 8)]
        nodes += [helper.make_node("MatMul", [f"x{i}", f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
    inits += [_w("W3", 16, 16), _w("b3", 16), _w("W4", 16, 16), _i64("s3", [-1, 4, 4]), _i64("s1", [-1, 1, 16]),
              _i64("axes", [1]), _i64("so", [-1, 2, 8])]
    nodes += [helper.make_node("Concat", ["a0", "a1"], ["c"], axis=-1),
              helper.make_node("MatMul", ["c", "W3"], ["h"]),
              helper.make_node("Add", ["h", "b3"], ["h1"]),
              helper.make_node("Reshape", ["h1", "s3"], ["v3"]),
              helper.make_node("Tanh", ["h1"], ["t"]),
              helper.make_node("Reshape", ["t", "s1"], ["t1"]),
              helper.make_node("Squeeze", ["t1", "axes"], ["t2"]),
              helper.make_node("MatMul", ["t2", "W4"], ["u"]),
              helper.make_node("Flatten", ["v3"], ["back"], axis=1),
              helper.make_node("Add", ["u", "back"], ["z"]),
              helper.make_node("Reshape", ["z", "so"], ["y"])]
    g = helper.make_graph(nodes, "views", [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["batch", 16])
                                           for i in range(2)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_the_arena_places_by_the_static_alias_analysis(tmp_path):
    """The arena's alias sets are the static analysis's (kiln/engine/aliases.py): views, Concat inputs in place
    and a graph output that is a view; the recorded run agrees with them, and placed runs are right."""
    model = views_model()
    engine = _build_with_torch_tactics(model, tmp_path)
    program, cpu = engine.program, torch.device("cpu")
    roots = storage_roots(program.graph, engine.registry)
    aliased = {n.op_type for n in program.graph.nodes for o in n.outputs if o is not None and o.id in roots}
    assert {"Reshape", "Flatten", "Squeeze", "Linear"} <= aliased  # views, and Concat inputs written in place
    [out] = program.output_ids
    assert out in roots  # the graph output is a view

    feeds = {f"x{i}": torch.randn(3, 16) for i in range(2)}
    env = {v.id: feeds[v.name] for v in program.graph.inputs}
    inputs, recorder = dict(env), Recorder()
    with torch.inference_mode():
        program.run(env, hook=recorder)
    layout = plan_layout(program, recorder, inputs, cpu, None)
    assert layout.aliases == roots and layout.unplaceable == {}
    concat = {s.outputs[0] for s in program.steps if s.in_place}
    for vid, root in roots.items():  # the record shows every alias named (Concat parts are joined by placing)
        if root not in concat:
            assert recorder.tensors[vid].untyped_storage().data_ptr() == \
                recorder.tensors[root].untyped_storage().data_ptr()
    made_by = {vid: i for i, s in enumerate(program.steps) for vid in s.outputs}
    assert layout.placements[made_by[roots[out]]] is None  # output memory: never the arena's
    [ci] = [made_by[c] for c in concat]
    whole = layout.placements[ci].concat
    for vid in (v for v, r in roots.items() if r == program.steps[ci].outputs[0]):
        p = layout.placements[made_by[vid]]
        assert p.must_land and p.out.untyped_storage().data_ptr() == whole.untyped_storage().data_ptr()

    ref, ctx = ReferenceEvaluator(model), engine.create_execution_context()
    first = ctx.infer(feeds)["y"]
    kept = first.clone()
    for batch in (3, 5, 3):
        other = {f"x{i}": torch.randn(batch, 16) for i in range(2)}
        for _ in range(2):  # recorded, then placed
            got = ctx.infer(other)["y"]
            want = ref.run(None, {k: v.numpy() for k, v in other.items()})[0]
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    assert torch.equal(first, kept)  # an output that is a view belongs to the caller: later runs leave it alone
    stats = ctx.memory_stats()
    assert stats["concat_in_place"] == 1 and stats["unplaceable"] == {} and stats["declined"] == []


def pass_through_plugins() -> PluginLibrary:
    """A plugin op whose reference returns its input, though nothing declares it a view (a mis-declared
    kernel), in a library of its own (no module-level registry is touched)."""
    lib = PluginLibrary()

    @lib.op("test.alias::PassThrough")
    def pass_through(x):
        return x

    return lib


def test_a_kernel_aliasing_what_the_analysis_calls_fresh_is_kept_out(tmp_path, caplog):
    """PassThrough returns the Linear output ``a``: the analysis says its output is fresh, so ``a``'s life would
    end at PassThrough and the next Linear (which reads PassThrough's output, as the Mul after it does) could be
    placed over it.
    The record catches it: both stay out of the arena, it is logged once and reported, results stay right."""
    inits = [_w("W0", 16, 16), _w("b0", 16), _w("W1", 16, 16), _w("b1", 16)]
    nodes = [helper.make_node("MatMul", ["x0", "W0"], ["m0"]), helper.make_node("Add", ["m0", "b0"], ["a"]),
             helper.make_node("PassThrough", ["a"], ["p"], domain="test.alias", name="pass"),
             helper.make_node("MatMul", ["p", "W1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["w"]),
             helper.make_node("Mul", ["p", "w"], ["y"])]
    g = helper.make_graph(nodes, "alias", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("test.alias", 1)])
    engine = _build_with_torch_tactics(model, tmp_path, plugins=pass_through_plugins())
    weights = {t.name: numpy_helper.to_array(t) for t in inits}
    ctx = engine.create_execution_context()
    with caplog.at_level(logging.WARNING, logger="kiln.runtime"):
        for _ in range(3):  # recorded, then placed twice
            feeds = {"x0": RNG.standard_normal((4, 16)).astype(np.float32)}
            a = feeds["x0"] @ weights["W0"] + weights["b0"]
            want = a * (a @ weights["W1"] + weights["b1"])
            np.testing.assert_allclose(ctx.infer(feeds)["y"], want, rtol=1e-4, atol=1e-4)
    warned = [r.getMessage() for r in caplog.records if "kept out of the arena" in r.getMessage()]
    assert len(warned) == 1 and "pass" in warned[0] and "returned the storage of" in warned[0], warned
    stats = ctx.memory_stats()
    assert list(stats["unplaceable"]) == ["pass"]
    assert stats["allocator_ops"].get("Linear") == 1  # ``a``: its storage is PassThrough's output too
    assert any("pass" in n for n in ctx.notes)
