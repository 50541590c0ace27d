"""Reduced precision is never silently wrong: every fp16/bf16 build is measured against float32 by default
(on the validation/calibration data, else a generated sample) and layers out of tolerance stay in float32."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import kiln


def _overflowing_model() -> onnx.ModelProto:
    """A MatMul whose intermediate (~3e5) overflows float16's 65504, scaled back down afterwards."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 16)) * 3e4).astype(np.float32)
    w2 = (rng.standard_normal((16, 8)) * 1e-5).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])]
    g = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("x", TP.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [4, 8])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_overflow_is_caught_by_default_and_kept_in_float32():
    model = _overflowing_model()
    e = kiln.build(model, fp16=True)
    acc = e.report.quantization["accuracy"]
    assert acc["checked"] and acc["met"] and acc["kept"], acc
    assert "generated sample" in acc["data"]
    assert any("kept in fp32" in n for n in e.report.notes)
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    got = e.create_execution_context().infer({"x": x})["y"]
    want = x @ onnx.numpy_helper.to_array(model.graph.initializer[0]) @ \
        onnx.numpy_helper.to_array(model.graph.initializer[1])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


def test_check_can_be_switched_off():
    e = kiln.build(_overflowing_model(), fp16=True, accuracy_target=None)
    assert "accuracy" not in e.report.quantization
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    assert not np.isfinite(e.create_execution_context().infer({"x": x})["y"]).all()  # what the check prevents


def test_default_target_is_recorded_in_the_engine(tmp_path):
    e = kiln.build(_overflowing_model(), fp16=True)
    e.save(tmp_path / "m.engine")
    loaded = kiln.Engine.load(tmp_path / "m.engine")
    assert loaded.report.quantization["accuracy"]["target"] == {"min_cosine": 0.999}


def test_bad_target_still_refused():
    with pytest.raises(ValueError, match="accuracy_target"):
        kiln.BuilderConfig(accuracy_target={"cos": 0.9})


def test_top1_counts_decisive_flips_that_cosine_lets_through():
    import torch
    from kiln.quant.accuracy import AccuracyTarget, compare, resolve_target
    ref = torch.tensor([[0.56, 0.44], [0.9, 0.1], [0.2, 0.8], [0.505, 0.495]])
    got = torch.tensor([[0.44, 0.56], [0.9, 0.1], [0.2, 0.8], [0.495, 0.505]])  # rows 0 and 3 flip
    m = compare([[ref]], [[got]])
    assert m["cosine"] > 0.96 and m["top1"] == 2 / 3  # row 3's gap is under DECISIVE of its range: not counted
    assert not resolve_target("default", "int8").met(m)
    assert resolve_target("default", "f16") == AccuracyTarget(min_cosine=0.999)
    assert AccuracyTarget.parse("top1>=0.95,cosine>=0.9") == AccuracyTarget(min_cosine=0.9, min_top1=0.95)


def test_int8_validates_on_held_out_calibration_batches():
    from kiln.passes.context import PassContext
    from kiln.passes.quantize_int8 import Data
    graph = kiln.parse(_overflowing_model())
    batches = [{"x": np.full((4, 16), i, np.float32)} for i in range(8)]
    ctx = PassContext(graph, kiln.BuilderConfig(int8=True, int8_calibrator=batches), None, None)
    data = Data(graph, ctx)
    seen = lambda bs: sorted(int(b["x"].flatten()[0]) for b in bs)  # noqa: E731
    assert seen(data.calibration()) == [0, 1, 2, 4, 5, 6] and seen(data.validation()) == [3, 7]
    few = Data(graph, PassContext(graph, kiln.BuilderConfig(int8=True, int8_calibrator=batches[:3]), None, None))
    assert seen(few.calibration()) == seen(few.validation()) == [0, 1, 2]  # too few to hold any out


def _one_hot_model(form: str) -> onnx.ModelProto:
    """int32 byte values one-hot encoded (jax2tf's Equal against a broadcast range, or OneHot), then a MatMul."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((257, 4)).astype(np.float32), "w")
    depth = numpy_helper.from_array(np.arange(257, dtype=np.int32).reshape(1, 1, 257), "range")
    shape = numpy_helper.from_array(np.array([1, 16, 257], np.int64), "shape")
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    if form == "equal":
        nodes = [helper.make_node("Unsqueeze", ["bytes", "axes"], ["u"]),
                 helper.make_node("Expand", ["range", "shape"], ["r"]),
                 helper.make_node("Equal", ["u", "r"], ["eq"]), helper.make_node("Cast", ["eq"], ["oh"], to=TP.FLOAT)]
        inits = [w, depth, shape, axes]
    else:
        nodes = [helper.make_node("OneHot", ["bytes", "d", "values"], ["oh"], axis=-1)]
        inits = [w, numpy_helper.from_array(np.array(257, np.int64), "d"),
                 numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "values")]
    nodes.append(helper.make_node("MatMul", ["oh", "w"], ["y"]))
    g = helper.make_graph(nodes, "onehot", [helper.make_tensor_value_info("bytes", TP.INT32, [1, 16])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("form", ["equal", "onehot"])
def test_generated_sample_covers_a_one_hot_inputs_range(form):
    """Integer inputs read through a one-hot encoding get values over its depth (was: all zeros, which let a
    reduced-precision build of a byte classifier pass its check on a degenerate input)."""
    from kiln.passes.context import PassContext
    from kiln.passes.quantize_target import generated_sample
    from kiln.frontend import parse
    graph = parse(_one_hot_model(form))
    ctx = PassContext(graph, kiln.BuilderConfig(device="cpu"), input_shapes={"bytes": (1, 16)})
    (feed,) = generated_sample(graph, ctx, batches=1)
    values = feed["bytes"]
    assert int(values.min()) >= 0 and int(values.max()) <= 256 and len(set(values.flatten().tolist())) > 4


def test_search_for_layers_to_keep_stops_at_its_time_budget(monkeypatch):
    """A target that keeping layers cannot reach in time is reported as such, not searched for minutes."""
    from kiln.passes import quantize_target
    monkeypatch.setattr(quantize_target, "FIT_BUDGET_S", 0.0)
    e = kiln.build(_overflowing_model(), fp16=True)
    acc = e.report.quantization["accuracy"]
    assert acc["checked"] and not acc["met"] and acc["kept"] == [] and acc["stopped"] == "after 0 s", acc
    assert any("NOT met" in n and "stopped after 0 s" in n for n in e.report.notes), e.report.notes


def test_a_target_the_user_set_is_searched_past_the_time_budget(monkeypatch):
    """The time budget is the default check's: an explicit target keeps its full search, so the engine does not
    depend on how fast the building machine measured."""
    from kiln.passes import quantize_target
    monkeypatch.setattr(quantize_target, "FIT_BUDGET_S", 0.0)
    e = kiln.build(_overflowing_model(), fp16=True, accuracy_target={"min_cosine": 0.99})
    acc = e.report.quantization["accuracy"]
    assert acc["met"] and acc["kept"] and "stopped" not in acc, acc
