"""A pure lowering (issue 16, item 4): ``lower`` makes a Plan, the steps over it each do one job, and the build
constructs the Engine once, last, and never edits it afterwards."""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import kiln
from kiln.builder.concat_in_place import mark_concats_in_place
from kiln.builder.lower import lower
from kiln.builder.memory_plan import plan_activation_memory
from kiln.builder.plan import Layer, Plan
from kiln.engine.binding import Binding
from kiln.engine.runtime import Engine
from kiln.ops import default_registry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "engine"))
from test_arena import _build_with_torch_tactics, _feeds, concat_mlp  # noqa: E402

CPU = torch.device("cpu")


def _graph():
    # a = Exp(x), b = Neg(x), c = Concat(a, b), y = Abs(c)
    g = helper.make_graph([helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
                           helper.make_node("Concat", ["a", "b"], ["c"], axis=0),
                           helper.make_node("Abs", ["c"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return kiln.parse(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _plan(graph, writes_out: set[str]) -> Plan:
    """A plan by hand (it is plain data): layers whose op type is in ``writes_out`` accept a given buffer."""
    layers = tuple(Layer(n, False, "", n.op_type in writes_out) for n in graph.nodes)
    return Plan(graph, layers, Binding(CPU, {}, {}, {}), default_registry())


def test_lower_binds_once_and_describes_each_layer():
    g = _graph()
    plan = lower(g, {}, CPU, default_registry())
    assert [layer.node for layer in plan.layers] == list(g.nodes)
    assert plan.binding.device == CPU and not plan.binding.notes
    concat = next(layer for layer in plan.layers if layer.node.op_type == "Concat")
    assert concat.accepts_out and not concat.on_host  # Concat's own kernel writes into ``out`` on the CPU
    assert plan.memory is None and plan.concat_inputs_in_place == 0  # the steps come after


def test_lower_stores_the_tuners_choices_on_the_nodes():
    g = _graph()
    label = g.nodes[0].label
    lower(g, {label: {"name": "torch", "params": {}}}, CPU, default_registry())
    assert g.nodes[0].meta["tactic"] == {"name": "torch", "params": {}}
    assert "tactic" not in g.nodes[1].meta


def test_mark_concats_in_place_is_a_step_over_the_plan():
    plan = _plan(_graph(), {"Exp", "Concat"})
    marked = mark_concats_in_place(plan)
    assert marked is not plan and plan.concat_inputs_in_place == 0
    assert marked.concat_inputs_in_place == 1
    concat = next(n for n in marked.graph.nodes if n.op_type == "Concat")
    assert concat.attrs["in_place"] == [0]
    (rejection,) = marked.rejections
    assert rejection["rule"] == "concat_in_place" and "input 1 (b)" in rejection["reason"]
    assert "cannot write into a given buffer" in rejection["reason"]


def test_a_concat_that_cannot_write_into_a_buffer_marks_nothing():
    marked = mark_concats_in_place(_plan(_graph(), {"Exp", "Neg"}))
    assert marked.concat_inputs_in_place == 0 and "in_place" not in next(
        n for n in marked.graph.nodes if n.op_type == "Concat").attrs
    assert [r["reason"] for r in marked.rejections] == ["the Concat runs on the host"]


def test_plan_activation_memory_is_a_step_over_the_plan():
    plain = plan_activation_memory(_plan(_graph(), set()), None)
    assert plain.arena and plain.header_fields() == {"arena": True, "arena_bytes": plain.memory.arena_bytes}
    fused = plan_activation_memory(mark_concats_in_place(_plan(_graph(), {"Exp", "Neg", "Concat"})), None)
    assert fused.memory.arena_bytes < plain.memory.arena_bytes  # a and b live in c's memory
    assert fused.memory.naive_bytes == 256  # one tensor: c (4+4 rows of 8 floats)


def test_header_fields_without_a_plan():
    plan = replace(_plan(_graph(), set()), arena=False)
    assert plan.header_fields() == {"arena": False}


@pytest.fixture
def constructed(monkeypatch):
    """Every Engine constructed, with a deep snapshot of what it held right after construction."""
    made = []
    init = Engine.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append((self, _snapshot(self)))

    monkeypatch.setattr(Engine, "__init__", spy)
    return made


def _snapshot(engine) -> dict:
    return {
        "header": json.dumps(engine.header, sort_keys=True, default=str),
        "report": json.dumps(engine.report.to_json(), sort_keys=True, default=str),
        "program": engine.program,
        "steps": [(s.node, s.kernel, s.tactic, s.accepts_out, s.in_place, copy.deepcopy(s.attrs))
                  for s in engine.program.steps],
        "graph": engine.graph, "load_notes": list(engine.load_notes), "plugins": engine.plugins,
        "choices": dict(engine._choices),
    }


def test_build_constructs_the_engine_last_and_never_edits_it(constructed, tmp_path):
    profile = kiln.Profile.of(**{f"x{i}": ((1, 16), (4, 16), (8, 16)) for i in range(3)})
    engine = _build_with_torch_tactics(concat_mlp(), tmp_path, profiles=(profile,))
    (first, _), (last, at_construction) = constructed  # one engine per build (the test builds twice)
    assert last is engine and first is not engine
    now = _snapshot(engine)
    assert now["program"] is at_construction["program"] and now["graph"] is at_construction["graph"]
    for key in at_construction:
        if key in ("program", "graph", "plugins"):
            assert now[key] is at_construction[key], key
        else:
            assert now[key] == at_construction[key], key
    # what the steps over the plan decided is in the engine from the start
    assert engine.report.fusions.get("concat_in_place") == 3
    assert engine.header["arena"] is True and engine.arena_bytes == engine.report.memory["arena_bytes"] > 0
    assert any(s.in_place for s in engine.program.steps)
    ctx = engine.create_execution_context()
    feeds = _feeds(4)
    np.testing.assert_allclose(ctx.infer(feeds)["y"], engine.create_execution_context(arena=False).infer(feeds)["y"])
