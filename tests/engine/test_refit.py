"""Refittable and weight-stripped engines: new weights by ONNX name or from an ONNX file, computed as a fresh
build of those weights computes them (through BatchNorm folding, Q/K/V merging, precision lowering, int8)."""
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.engine.graph_json import encode_graph
from kiln.errors import EngineFormatError, KilnError, ModelMismatchError


def conv_bn_model(seed: int, channels: int = 8):
    """Conv -> BatchNorm -> Relu -> Flatten -> Gemm: BatchNorm folds into the convolution's weights."""
    rng = np.random.default_rng(seed)
    inits = {"W": rng.standard_normal((channels, 4, 3, 3)), "s": rng.random(channels) + 0.5,
             "b": rng.standard_normal(channels), "m": rng.standard_normal(channels), "v": rng.random(channels) + 0.5,
             "F": rng.standard_normal((channels * 64, 10)), "FB": rng.standard_normal(10)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "F", "FB"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "convbn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                          [numpy_helper.from_array(a.astype(np.float32), n) for n, a in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def qkv_model(seed: int):
    """Three projections of one input (merged into one wider layer by fuse_horizontal), summed."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    for p in "qkv":
        inits += [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), f"W{p}"),
                  numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), f"B{p}")]
        nodes += [helper.make_node("MatMul", ["x", f"W{p}"], [f"m{p}"], name=f"mm{p}"),
                  helper.make_node("Add", [f"m{p}", f"B{p}"], [p], name=f"add{p}")]
    nodes += [helper.make_node("Mul", ["q", "k"], ["qk"], name="qk"), helper.make_node("Add", ["qk", "v"], ["y"],
                                                                                         name="out")]
    g = helper.make_graph(nodes, "qkv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def norm_mlp_model(seed: int):
    """LayerNorm -> MatMul -> Relu -> MatMul: with int8 the LayerNorm writes the 8-bit input of the first
    GEMM itself (quantize_norm_outputs), so that scale lives on the norm, not on the GEMM."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("g", rng.random(16) + 0.5), ("b", rng.standard_normal(16)), ("W1", rng.standard_normal((16, 32))),
        ("W2", rng.standard_normal((32, 16)))]]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["n", "W1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "normmlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


X = {"x": np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)}
XQ = {"x": np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)}


def run(engine, feed=X):
    return engine.create_execution_context().infer(feed)["y"]


def assert_close(got, want, options=None):
    """A fresh build may tune another tactic than the refitted engine kept (another summation order): equal
    within the precision's tolerance. The constants themselves are compared bit for bit elsewhere."""
    options = options or {}
    tol = 2e-2 if options.get("fp16") or options.get("int8") else 1e-5
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=tol, atol=tol)


def constants(engine):
    plan, tensors = encode_graph(engine.graph)
    return plan, tensors


@pytest.mark.parametrize("make, feed, options", [
    (conv_bn_model, X, {}),
    (conv_bn_model, X, {"fp16": True}),
    (conv_bn_model, X, {"fp16": True, "accuracy_target": {"min_cosine": 0.99999999},  # layers kept in fp32
                        "profiles": (kiln.Profile.fixed({"x": (2, 4, 8, 8)}),)}),
    (qkv_model, XQ, {}),
])
def test_refit_equals_a_fresh_build_and_same_weights_are_bit_identical(make, feed, options):
    engine = kiln.build(make(1), refittable=True, **options)
    if "accuracy_target" in options:
        assert engine.report.quantization["accuracy"]["kept"]
    before = constants(engine)
    r = kiln.Refitter(engine)
    r.set_weights_from_onnx(make(1))
    r.refit()
    after = constants(engine)
    assert after[0] == before[0] and before[1].keys() == after[1].keys()
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])

    r.set_weights_from_onnx(make(2))
    r.refit()
    fresh = kiln.build(make(2), **options)
    assert_close(run(engine, feed), run(fresh, feed), options)
    assert not np.array_equal(run(engine, feed), run(kiln.build(make(1), **options), feed))
    # Saved and loaded, the refitted engine keeps its new weights and stays refittable.
    again = kiln.Engine.deserialize(engine.serialize())
    np.testing.assert_array_equal(run(again, feed), run(engine, feed))
    assert again.source_graph is not None and kiln.Refitter(again).get_all_weights() == r.get_all_weights()


@pytest.mark.parametrize("make, shape", [(conv_bn_model, (2, 4, 8, 8)), (norm_mlp_model, (2, 5, 16))])
def test_int8_refit_requantizes_with_the_stored_scales(tmp_path, make, shape):
    rng = np.random.default_rng(5)
    data = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(3)]
    feed = {"x": rng.standard_normal(shape).astype(np.float32)}
    cache = str(tmp_path / "cal.json")
    engine = kiln.build(make(1), refittable=True, int8=True, int8_calibrator=data, calibration_cache=cache)
    assert any(n.op_type.startswith("Q") for n in engine.graph.nodes)
    before = constants(engine)
    kiln.Refitter(engine).refit()  # nothing set: the same weights
    after = constants(engine)
    assert after[0] == before[0] and all(torch.equal(before[1][k], after[1][k]) for k in before[1])
    r = kiln.Refitter(engine)
    r.set_weights_from_onnx(make(2))
    r.refit()
    fresh = kiln.build(make(2), int8=True, calibration_cache=cache)  # the same scales, from the cache
    assert_close(run(engine, feed), run(fresh, feed), {"int8": True})


def test_set_named_weights_one_at_a_time():
    engine = kiln.build(conv_bn_model(1), refittable=True)
    new = {i.name: numpy_helper.to_array(i) for i in conv_bn_model(2).graph.initializer}
    r = kiln.Refitter(engine)
    assert r.get_all_weights() == sorted(new) and r.get_missing_weights() == []
    r.set_named_weights("v", new["v"])  # a BatchNorm variance: it reaches the engine through the folded conv
    r.refit()
    mixed = conv_bn_model(1)
    for init in mixed.graph.initializer:
        if init.name == "v":
            init.CopyFrom(numpy_helper.from_array(new["v"], "v"))
    assert_close(run(engine), run(kiln.build(mixed)))
    np.testing.assert_array_equal(kiln.Refitter(engine).get_named_weights("v").numpy(), new["v"])


def test_refit_refuses_what_it_cannot_do():
    with pytest.raises(KilnError, match="not refittable"):
        kiln.Refitter(kiln.build(conv_bn_model(1)))
    engine = kiln.build(conv_bn_model(1), refittable=True)
    r = kiln.Refitter(engine)
    with pytest.raises(ModelMismatchError, match="no initializer named 'nope'"):
        r.set_named_weights("nope", np.zeros(3, np.float32))
    with pytest.raises(ModelMismatchError, match=r"'W' is float32 \[8, 4, 3, 3\].*float32 \[8, 4, 3\]"):
        r.set_named_weights("W", np.zeros((8, 4, 3), np.float32))
    with pytest.raises(ModelMismatchError, match="lacks initializers"):
        r.set_weights_from_onnx(qkv_model(1))
    with pytest.raises(ModelMismatchError, match="'W' is float32 \\[4, 4, 3, 3\\]"):
        r.set_weights_from_onnx(conv_bn_model(1, channels=4))


def test_a_refit_that_changes_a_pass_decision_is_refused_and_the_engine_unchanged():
    """An Add of a scalar zero is removed at build (remove_noops); a refit that makes it 2 needs that layer.
    (A Mul by a scale would refit: fuse_epilogues folds it into the weights, and the replay folds the new one.)"""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "zero"], ["y"])]
    g = helper.make_graph(nodes, "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 16])], inits)
    engine = kiln.build(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), refittable=True)
    want = run(engine, XQ)
    r = kiln.Refitter(engine)
    r.set_named_weights("zero", np.array(2.0, np.float32))
    with pytest.raises(ModelMismatchError, match="do not give this engine's graph"):
        r.refit()
    np.testing.assert_array_equal(run(engine, XQ), want)


def test_a_refit_during_a_run_leaves_that_run_on_the_old_weights():
    """The refit happens inside a run (its program's first call): that run finishes on the old weights, the
    context's next run uses the new ones; no run sees a mix."""
    engine = kiln.build(conv_bn_model(1), refittable=True)
    ctx = engine.create_execution_context()
    old = ctx.infer(X)["y"]
    r = kiln.Refitter(engine)
    r.set_weights_from_onnx(conv_bn_model(2))
    program = engine.program
    run_old = program.run

    def run_and_refit(*args, **kwargs):
        r.refit()
        assert engine.program is not program
        return run_old(*args, **kwargs)

    program.run = run_and_refit
    np.testing.assert_array_equal(ctx.infer(X)["y"], old)
    new = ctx.infer(X)["y"]
    assert_close(new, run(kiln.build(conv_bn_model(2))))
    assert not np.allclose(new, old)


def test_trt_refitter():
    import kiln.trt as trt
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network()
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(conv_bn_model(1).SerializeToString())
    config = builder.create_builder_config()
    config.device = "cpu"
    config.set_flag(trt.BuilderFlag.REFIT)
    profile = builder.create_optimization_profile()  # a dynamic batch needs one, as in TensorRT
    profile.set_shape("x", (1, 4, 8, 8), (2, 4, 8, 8), (4, 4, 8, 8))
    config.add_optimization_profile(profile)
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    refitter = trt.Refitter(engine, logger)
    assert "W" in refitter.get_all_weights() and refitter.get_missing_weights() == []
    new = {i.name: numpy_helper.to_array(i) for i in conv_bn_model(2).graph.initializer}
    for name, w in new.items():
        assert refitter.set_named_weights(name, w)
    assert not refitter.set_named_weights("W", new["F"])  # wrong shape: False, logged
    assert refitter.refit_cuda_engine()
    assert_close(run(engine.engine), run(kiln.build(conv_bn_model(2))))


def test_trt_onnx_parser_refitter(tmp_path):
    import onnx
    import kiln.trt as trt
    from trt_support import RecordingLogger
    logger = RecordingLogger()
    builder = trt.Builder(logger)
    network = builder.create_network()
    assert trt.OnnxParser(network, logger).parse(conv_bn_model(1).SerializeToString())
    config = builder.create_builder_config()
    config.device = "cpu"
    config.set_flag(trt.BuilderFlag.REFIT)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4, 8, 8), (2, 4, 8, 8), (4, 4, 8, 8))
    config.add_optimization_profile(profile)
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    refitter = trt.Refitter(engine, logger)
    onnx.save(conv_bn_model(2), tmp_path / "new.onnx")
    assert trt.OnnxParserRefitter(refitter, logger).refit_from_file(str(tmp_path / "new.onnx"))
    assert refitter.refit_cuda_engine()
    assert_close(run(engine.engine), run(kiln.build(conv_bn_model(2))))
    other = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])]))
    onnx.save(other, tmp_path / "other.onnx")
    assert not trt.OnnxParserRefitter(refitter, logger).refit_from_file(str(tmp_path / "other.onnx"))
    assert logger.errors, "a model of another architecture: False, the reason logged"


# -- weight-stripped engines ---------------------------------------------------------------------------------
def test_stripped_engine_loads_with_weights_from(tmp_path):
    import onnx
    engine = kiln.build(conv_bn_model(1))
    full, stripped = engine.serialize(), engine.serialize(weights=False)
    assert len(stripped) < 0.5 * len(full)
    onnx.save(conv_bn_model(1), str(tmp_path / "m.onnx"))
    (tmp_path / "e.kiln").write_bytes(stripped)
    loaded = kiln.Engine.load(tmp_path / "e.kiln", weights_from=str(tmp_path / "m.onnx"))
    np.testing.assert_array_equal(run(loaded), run(engine))
    # Another training run of the same architecture gives its own weights.
    other = kiln.Engine.deserialize(stripped, weights_from=conv_bn_model(2))
    assert_close(run(other), run(kiln.build(conv_bn_model(2))))
    # A stripped engine saved again with its weights loads on its own.
    np.testing.assert_array_equal(run(kiln.Engine.deserialize(loaded.serialize())), run(engine))


def test_stripped_engine_refuses_no_or_the_wrong_model():
    stripped = kiln.build(conv_bn_model(1)).serialize(weights=False)
    with pytest.raises(EngineFormatError, match="saved without its weights.*weights_from="):
        kiln.Engine.deserialize(stripped)
    with pytest.raises(ModelMismatchError, match="lacks initializers 'W', 's'"):
        kiln.Engine.deserialize(stripped, weights_from=qkv_model(1))
    with pytest.raises(ModelMismatchError, match=r"initializer 'W' is float32 \[4, 4, 3, 3\]"):
        kiln.Engine.deserialize(stripped, weights_from=conv_bn_model(1, channels=4))
    changed = conv_bn_model(1)
    changed.graph.node[2].op_type = "Sigmoid"  # same initializers, another graph
    with pytest.raises(ModelMismatchError, match="its graph .* differs"):
        kiln.Engine.deserialize(stripped, weights_from=changed)


def test_stripped_header_fields_are_validated():
    from kiln.engine import format as fmt
    stripped = kiln.build(conv_bn_model(1)).serialize(weights=False)
    header, plan, weights = fmt.unpack(stripped)
    for k in ("plan_bytes", "weights_bytes", "raw_dtypes"):
        header.pop(k)
    for field, bad, message in [("weights", "some", "header field 'weights' must be one of 'stripped'"),
                                ("source", {"graph_sha256": "x", "initializers": {}}, "64 lowercase hex"),
                                ("source", {"graph_sha256": "0" * 64, "initializers": {"W": ["float32", [-1]]}},
                                 "'initializers' 'W' shape")]:
        with pytest.raises(EngineFormatError, match=message):
            fmt.unpack(fmt.pack(dict(header, **{field: bad}), plan, weights))


def test_int8_refit_can_recalibrate():
    rng = np.random.default_rng(5)
    data = [{"x": rng.standard_normal((2, 4, 8, 8)).astype(np.float32)} for _ in range(3)]
    engine = kiln.build(conv_bn_model(1), refittable=True, int8=True, int8_calibrator=data, accuracy_target=None)
    r = kiln.Refitter(engine)
    r.set_weights_from_onnx(conv_bn_model(2))
    r.refit(calibration_data=data)
    fresh = kiln.build(conv_bn_model(2), int8=True, int8_calibrator=data, accuracy_target=None)
    scales = [n.attrs["x_scale"] for n in engine.graph.nodes if "x_scale" in n.attrs]
    assert scales and scales == [n.attrs["x_scale"] for n in fresh.graph.nodes if "x_scale" in n.attrs]
    assert_close(run(engine), run(fresh), {"int8": True})


def test_refit_of_an_engine_with_a_plugin():
    """The replay runs the build's passes with the engine's plugins: a refitted engine with a custom op equals a
    fresh build of the new weights."""
    from kiln.plugin import PluginLibrary
    plugins = PluginLibrary()

    @plugins.op("test.refit::SoftClip", elementwise=True)
    def soft_clip(x, *, alpha: float = 1.0):
        return alpha * torch.tanh(x / alpha)

    def model(seed):
        w = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((8, 4)).astype(np.float32), "w")
        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]),
                               helper.make_node("SoftClip", ["m"], ["y"], domain="test.refit", alpha=2.0)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("test.refit", 1)])
    engine = kiln.build(model(0), kiln.BuilderConfig(device="cpu", refittable=True), plugins=plugins)
    refitter = kiln.Refitter(engine)
    refitter.set_named_weights("w", numpy_helper.to_array(model(1).graph.initializer[0]))
    refitter.refit()
    x = np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)
    fresh = kiln.build(model(1), kiln.BuilderConfig(device="cpu"), plugins=plugins)
    np.testing.assert_array_equal(engine.create_execution_context().infer({"x": x})["y"],
                                  fresh.create_execution_context().infer({"x": x})["y"])
