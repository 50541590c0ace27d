"""The engine loader validates before it trusts: each bad field is an EngineFormatError (or, for a device the
engine was not built for, a DeviceMismatchError) that names the field; engines saved before the validator
existed keep loading.

Edited files are re-packed with a fresh checksum (it is unkeyed: an attacker recomputes it). Tests expect the
error from ``Engine.deserialize`` and never run the engine, so a validator that regressed fails the test
instead of crashing pytest (a zero stride reaches oneDNN's integer division: SIGFPE).
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.engine import device_info
from kiln.engine import format as fmt

sys.path.insert(0, str(Path(__file__).parent))
import engine_mutations  # noqa: E402
import engine_seeds  # noqa: E402

LEGACY = Path(__file__).parent.parent / "data" / "engines"


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    return {name: kiln.build(make(), **engine_seeds.build_options(name)).serialize()
            for name, make in engine_seeds.SEEDS.items()}


def edit(data: bytes, plan=None, header=None, weights=None) -> bytes:
    """``data`` with its plan, header or weights changed in place by the given functions, re-packed."""
    h, p, w = fmt.unpack(data)
    for f, part in ((plan, p), (header, h), (weights, w)):
        if f is not None:
            f(part)
    return fmt.pack(h, p, w)


def node(plan: dict, name: str) -> dict:
    return next(n for n in plan["nodes"] if n["name"] == name)


def ints(*values) -> dict:
    return {"list": [{"i": v} for v in values]}


def refused(data: bytes, *fields: str, error=kiln.EngineFormatError, **load) -> str:
    with pytest.raises(error) as e:
        kiln.Engine.deserialize(data, **load)
    for f in fields:
        assert f in str(e.value), str(e.value)
    return str(e.value)


# -- engines saved before the validator --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(engine_seeds.SEEDS))
def test_engines_saved_before_the_validator_still_load_and_run(name):
    from onnx.reference import ReferenceEvaluator
    path = LEGACY / f"{name}_format1_kiln0.1.0.bin"
    engine = kiln.Engine.load(path)
    assert "cpu_capability" not in engine.header["device"]  # absent fields are not checked
    model, feed = engine_seeds.SEEDS[name](), engine_seeds.feed(name)
    got = engine.create_execution_context().infer(feed)
    for out, want in zip(model.graph.output, ReferenceEvaluator(model).run(None, feed)):
        np.testing.assert_allclose(got[out.name], want, rtol=1e-4, atol=1e-5)


def test_cpu_engines_record_architecture_and_capability(seeds):
    h, _, _ = fmt.unpack(seeds["mlp"])
    assert h["device"]["machine"] == platform.machine()
    assert h["device"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


# -- convolution and pool geometry -------------------------------------------------------------------------------
@pytest.mark.parametrize("layer, attr, value, words", [
    ("conv1", "strides", ints(0, 1), "must be a list of integers in [1,"),
    ("conv1", "dilations", ints(1, 0), "must be a list of integers in [1,"),
    ("conv1", "pads", ints(1, -1, 1, 1), "must be a list of integers in [0,"),
    ("conv1", "strides", ints(1), "must have 2 entries"),
    ("conv2", "group", {"i": 0}, "must be in [1,"),
    ("conv2", "group", {"i": 3}, "does not divide the weight's 4 channels"),
    ("conv1", "group", {"i": 2}, "needs 6 input channels"),  # weight [4, 3, 3, 3] in 2 groups; x has 3
    ("pool1", "strides", ints(0, 2), "'strides'"),
    ("pool1", "kernel_shape", ints(2, 0), "'kernel_shape'"),
    ("pool2", "pads", ints(0, 0, -1, 0), "'pads'"),
    ("conv1", "auto_pad", {"s": "SAME"}, "'auto_pad'"),
])
def test_bad_window_attribute_is_refused_naming_it(seeds, layer, attr, value, words):
    def change(p):
        node(p, layer)["attrs"][attr] = value
    msg = refused(edit(seeds["conv"], plan=change), f"plan node {layer!r}", f"attribute {attr!r}")
    assert words in msg


def test_zero_stride_under_onednn_is_refused_not_sigfpe(seeds):
    """The issue's reproducer: stride 0 on a oneDNN convolution killed the process at the first infer."""
    def change(p):
        conv = node(p, "conv1")
        conv["attrs"]["strides"] = ints(0, 1)
        conv["meta"]["tactic"] = {"name": "onednn", "params": {}}
    refused(edit(seeds["conv"], plan=change), "'conv1'", "'strides'")


@pytest.mark.parametrize("step, words", [("bogus", "not one of"), ("add:9", "reads input 9"),
                                         ("leaky_relu", "not one of"), ("clip:a:b", "not one of")])
def test_bad_epilogue_step(seeds, step, words):
    def change(p):
        node(p, "conv2")["attrs"]["epilogue"] = {"list": [{"s": step}]}
    assert words in refused(edit(seeds["conv"], plan=change), "'conv2'", "'epilogue'")


def test_in_place_only_on_concat(seeds):
    def change(p):
        node(p, "flat")["attrs"]["in_place"] = ints(0)
    refused(edit(seeds["conv"], plan=change), "'flat'", "'in_place'", "only for Concat")


def test_axis_and_perm_in_range(seeds):
    def axis(p):  # its input's rank is not recorded: the bound is torch's 64 dimensions
        node(p, "softmax")["attrs"]["axis"] = {"i": 99}
    refused(edit(seeds["mlp"], plan=axis), "'softmax'", "'axis'")

    def lengths(p):  # a 2-D convolution (its weight is [4, 3, 3, 3]) with three strides
        node(p, "conv1")["attrs"]["strides"] = ints(1, 1, 1)
    refused(edit(seeds["conv"], plan=lengths), "'conv1'", "'strides'", "must have 2 entries")

    def perm(p):
        node(p, "tr")["attrs"]["perm"] = ints(0, 0, 1)
    refused(edit(seeds["mlp"], plan=perm), "'tr'", "'perm'", "permutation")


def test_huge_reshape_target_is_refused(seeds):
    h, p, w = fmt.unpack(seeds["mlp"])
    key = next(v["const"] for v in p["values"] if v["name"] == "shape")
    w[key] = torch.tensor([2**40, 2**40, 4], dtype=torch.int64)
    refused(fmt.pack(h, p, w), "'reshape'", "shape (input 1)", "elements")


# -- plan structure ----------------------------------------------------------------------------------------------
def test_cycle_is_refused(seeds):
    """relu reads mm2's output, produced after it: the plan would read a value before computing it."""
    def change(p):
        mm2 = node(p, "mm2")
        node(p, "relu" if any(n["name"] == "relu" for n in p["nodes"]) else "mm1")["inputs"][0] = mm2["outputs"][0]
    refused(edit(seeds["mlp"], plan=change), "before any node produces it")


def test_value_index_out_of_range(seeds):
    def change(p):
        p["nodes"][0]["inputs"][0] = 10**6
    refused(edit(seeds["mlp"], plan=change), "input 0", "must be in [0,")


def test_unknown_op(seeds):
    def change(p):
        p["nodes"][0]["op"] = "NoSuchOp"
    refused(edit(seeds["mlp"], plan=change), "NoSuchOp", "not a Kiln operator")


def test_weight_declared_type_must_match(seeds):
    h, p, w = fmt.unpack(seeds["mlp"])
    key = next(v["const"] for v in p["values"] if v["name"] == "mm1.weight")
    w[key] = w[key].to(torch.float64)
    refused(fmt.pack(h, p, w), "'mm1.weight'", "const", "torch.float64")


def test_bad_tactic_record(seeds):
    def change(p):
        node(p, "conv1")["meta"]["tactic"] = {"params": {}}
    refused(edit(seeds["conv"], plan=change), "'conv1'", "meta 'tactic' name")


def test_deep_json_is_a_format_error_not_recursion_error(seeds):
    _, hb, pb, wb = engine_mutations.split(seeds["mlp"])
    plan = pb.replace(b'"opsets":{', b'"deep":' + b"[" * 100_000 + b"]" * 100_000 + b',"opsets":{', 1)
    header = json.loads(hb)
    header["plan_bytes"] = len(plan)
    refused(engine_mutations.repack(json.dumps(header).encode(), plan, wb), "the plan is nested 100001 levels")


def test_deep_subgraphs(seeds):
    def change(p):
        branch = node(p, "branch")
        inner = branch["attrs"]["then_branch"]["g"]
        for _ in range(30):
            inner = {"name": "deep", "values": [], "inputs": [], "constants": [], "outputs": [], "opsets": {},
                     "nodes": [{"op": "If", "domain": "", "name": "n", "inputs": [], "outputs": [],
                                "attrs": {"then_branch": {"g": inner}}, "meta": {}}]}
        branch["attrs"]["then_branch"]["g"] = inner
    refused(edit(seeds["control"], plan=change), "subgraph nested 25 levels deep")


# -- header: sizes, versions, device -----------------------------------------------------------------------------
def test_huge_declared_section_sizes(seeds):
    _, hb, pb, wb = engine_mutations.split(seeds["mlp"])
    for key, value, words in (("plan_bytes", 2**62, "do not add up"), ("plan_bytes", -1, "'plan_bytes'"),
                              ("weights_bytes", 10**30, "'weights_bytes'")):
        header = json.loads(hb)
        header[key] = value
        refused(engine_mutations.repack(json.dumps(header).encode(), pb, wb), words)


def test_huge_raw_weight_declaration(seeds):
    _, hb, pb, wb = engine_mutations.split(seeds["mlp"])  # re-packed by hand: fmt.pack writes raw_dtypes itself
    key = next(iter(fmt.unpack(seeds["mlp"])[2]))
    for declared in (["uint16", [2**40]], ["uint16", [-1]], ["bogus", [1]], ["uint16", "x"]):
        header = json.loads(hb)
        header["raw_dtypes"] = {key: declared}
        refused(engine_mutations.repack(json.dumps(header).encode(), pb, wb), "'raw_dtypes'")


def test_load_checks_file_size_before_reading(seeds, tmp_path):
    path = tmp_path / "m.kiln"
    path.write_bytes(seeds["mlp"])
    with pytest.raises(kiln.EngineFormatError, match="over the limit of 1000 bytes"):
        kiln.Engine.load(path, max_bytes=1000)
    assert kiln.Engine.load(path, max_bytes=len(seeds["mlp"])).num_layers > 0


@pytest.mark.parametrize("field, value, loads", [
    ("kiln", "0.2.0", False), ("kiln", "1.0.0", False), ("kiln", "0.1.99", True), ("kiln", "0.0.3", True),
    ("torch", "3.0.0", False), ("torch", "1.13.1", False), (("torch"), "2.4.0", True), ("kiln", "abc", False)])
def test_versions(seeds, field, value, loads):
    def change(h):
        h["versions"][field] = value
    data = edit(seeds["mlp"], header=change)
    if loads:
        kiln.Engine.deserialize(data, strict_device=True)
    else:
        refused(data, f"versions.{field}", strict_device=True)
    if value != "abc":  # not strict: another Kiln or torch of the format version loads, and says so
        engine = kiln.Engine.deserialize(data)
        assert loads or any(value in n for n in engine.load_notes), engine.load_notes
    else:
        refused(data, f"versions.{field}")


def test_too_new_kiln_is_named_before_other_fields(seeds):
    def change(h):
        h["versions"]["kiln"] = "0.2.0"
        h["config"]["fp16"] = "a newer Kiln's meaning"
    assert "newer than this Kiln" in refused(edit(seeds["mlp"], header=change), "versions.kiln", strict_device=True)


def test_other_cpu_architecture_is_refused(seeds):
    def change(h):
        h["device"]["machine"] = "riscv64" if platform.machine() != "riscv64" else "x86_64"
    data = edit(seeds["mlp"], header=change)
    refused(data, "device.machine", platform.machine(), error=kiln.DeviceMismatchError, strict_device=True)
    assert "running on CPU" in kiln.Engine.deserialize(data).load_notes[0]  # not strict: it moves here


def test_lower_cpu_capability_is_refused_naming_both(seeds, monkeypatch):
    def change(h):
        h["device"]["cpu_capability"] = "AVX2"
    data = edit(seeds["mlp"], header=change)
    monkeypatch.setattr(device_info, "cpu_capability", lambda: "DEFAULT")
    refused(data, "device.cpu_capability", "AVX2", "DEFAULT", error=kiln.DeviceMismatchError, strict_device=True)
    assert kiln.Engine.deserialize(data).load_notes  # not strict: it moves here
    monkeypatch.setattr(device_info, "cpu_capability", lambda: "AVX512")
    kiln.Engine.deserialize(data, strict_device=True)  # a higher capability runs it


@pytest.mark.parametrize("key, value", [("arena_bytes", -1), ("arena_bytes", 2**62), ("arena", "yes"),
                                        ("output_names", [5]), ("device", {"type": 5})])
def test_header_field_types(seeds, key, value):
    def change(h):
        h[key] = value
    refused(edit(seeds["mlp"], header=change), f"'{key}")


def test_config_and_report_fields(seeds):
    def config(h):
        h["config"]["cuda_graphs"] = "yes"
    refused(edit(seeds["mlp"], header=config), "'config.cuda_graphs'")

    def device(h):
        h["config"]["device"] = "cuda:x"
    refused(edit(seeds["mlp"], header=device), "'config'", "cuda:x")

    def record(h):  # the engine reads only its spec (engine/spec.py) of the stored build configuration
        h["config"]["optimization_level"] = "high"
    assert kiln.Engine.deserialize(edit(seeds["mlp"], header=record)).header["config"]["optimization_level"] == "high"

    def report(h):
        h["report"]["layers"][0]["covers"] = 5
    refused(edit(seeds["mlp"], header=report), "'report.layers.0.covers'")


def test_anything_unexpected_while_decoding_is_a_format_error(seeds, monkeypatch):
    from kiln.engine import graph_json

    def broken(*args, **kwargs):
        raise TypeError("a decoding bug the validator did not foresee")
    monkeypatch.setattr(graph_json, "decode_graph", broken)
    with pytest.raises(kiln.EngineFormatError, match="could not be loaded: TypeError"):
        kiln.Engine.deserialize(seeds["mlp"])
