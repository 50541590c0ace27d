"""Per-layer precisions (trtexec's --layerPrecisions): by op type, by name, sensitive ops kept in float32,
strict types, and int8 mixed with fp16."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import kiln

rng = np.random.default_rng(0)
F = TensorProto.FLOAT


def w(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def mlp():
    """The same weights whichever tests ran before it (pytest-xdist schedules them differently from run to run)."""
    global rng
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"], name="fc1"), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "W2"], ["m2"], name="fc2"),
             helper.make_node("Softmax", ["m2"], ["s"], axis=-1, name="sig"),
             helper.make_node("ReduceSum", ["s", "axes"], ["y"], keepdims=1, name="sum")]
    inits = [numpy_helper.from_array(a, n) for n, a in [("W1", w(16, 32)), ("b1", w(32)), ("W2", w(32, 8) * 0.2),
                                                         ("axes", np.array([-1], np.int64))]]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [4, 16])],
                          [helper.make_tensor_value_info("y", F, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def precisions(engine):
    return {(l.covers[0] if l.covers else l.name): l.precision for l in engine.report.layers if l.op != "Cast"}


def run(engine, x):
    return engine.create_execution_context().infer({"x": x})["y"]


def test_fp16_keeps_sensitive_reductions_in_float32():
    m, x = mlp(), w(4, 16)
    e = kiln.build(m, fp16=True)
    p = precisions(e)
    assert p["fc1"] == "f16" and p["fc2"] == "f16" and p["sum"] == "f32"
    out = run(e, x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ReferenceEvaluator(m).run(None, {"x": x})[0], rtol=1e-2, atol=1e-2)


def test_layer_precisions_by_op_type_and_name():
    m, x = mlp(), w(4, 16)
    ref = ReferenceEvaluator(m).run(None, {"x": x})[0]
    e = kiln.build(m, fp16=True, layer_precisions={"MatMul": "fp32"})
    p = precisions(e)
    assert p["fc1"] == "f32" and p["fc2"] == "f32" and p["sig"] == "f16"
    np.testing.assert_allclose(run(e, x), ref, rtol=1e-2, atol=1e-2)
    e = kiln.build(m, fp16=True, layer_precisions={"fc2": "fp32", "ReduceSum": "fp16"})
    p = precisions(e)
    assert p["fc1"] == "f16" and p["fc2"] == "f32" and p["sum"] == "f16"
    # Without the fp16 flag only the layers asked for are lowered; globs match names.
    e = kiln.build(m, layer_precisions={"fc*": "bf16"})
    p = precisions(e)
    assert p["fc1"] == "bf16" and p["fc2"] == "bf16" and p["sig"] == "f32"
    np.testing.assert_allclose(run(e, x), ref, rtol=5e-2, atol=5e-2)


def test_strict_types_keep_the_models_types():
    e = kiln.build(mlp(), fp16=True, strict_types=True)
    assert set(precisions(e).values()) == {"f32"}


def test_bad_layer_precision_is_refused():
    with pytest.raises(ValueError, match="unknown layer precision"):
        kiln.BuilderConfig(layer_precisions={"fc1": "int4"})
    with pytest.raises(ValueError, match="accuracy_target"):
        kiln.BuilderConfig(accuracy_target={"cos": 0.9})
    with pytest.raises(ValueError, match="calibration method"):
        kiln.BuilderConfig(calibration_method="kl")


def test_int8_with_fp16_between():
    m, x = mlp(), w(4, 16)
    data = [{"x": w(4, 16)} for _ in range(8)]
    e = kiln.build(m, int8=True, fp16=True, int8_calibrator=data, calibration_method="minmax")
    p = precisions(e)
    assert p["fc1"] == "int8" and p["fc2"] == "int8" and p["sum"] == "f32"
    ref = ReferenceEvaluator(m).run(None, {"x": x})[0]
    out = run(e, x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0.05, atol=0.05 * float(np.abs(ref).max()))


def test_trtexec_layer_precision_spec():
    from kiln.quant.layer_precision import parse_spec
    assert parse_spec("fc1:fp16, *:fp32,a:b:int8") == {"fc1": "fp16", "*": "fp32", "a:b": "int8"}
    with pytest.raises(ValueError, match="layerName:precision"):
        parse_spec("fc1")


def test_fp16_accuracy_target_keeps_sensitive_layers_in_float32():
    m = mlp()
    r = np.random.default_rng(1)
    data = [{"x": r.standard_normal((4, 16)).astype(np.float32) * 30} for _ in range(4)]
    e = kiln.build(m, fp16=True, validation_data=data, accuracy_target={"max_rel_error": 1e-6})
    acc = e.report.quantization["accuracy"]
    assert acc["checked"] and acc["all_lowered"]["max_rel_error"] > 1e-6
    assert acc["met"] and acc["kept"]
    kept = {k["layer"] for k in acc["kept"]}
    assert all(precisions(e)[name] == "f32" for name in kept)
    assert any(p == "f16" for p in precisions(e).values())
    # Met at once: nothing kept, the whole graph in fp16 (but the reductions).
    e = kiln.build(m, fp16=True, validation_data=data, accuracy_target={"max_rel_error": 0.5})
    assert e.report.quantization["accuracy"]["kept"] == [] and precisions(e)["fc1"] == "f16"
