"""kiln.trt's debug tensors, in TensorRT's call sequence: ``network.mark_debug(tensor)`` at build,
``context.set_debug_listener`` and ``set_tensor_debug_state`` at run time; the listener sees each enabled debug
tensor's value, which stays unfused in the engine; the engine file keeps the list and validates it on load."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import kiln
import kiln.trt as trt
from kiln import errors
from kiln.engine import format as fmt
from kiln.engine.buffers import wrap_address
from kiln.trt.types import _TO_KILN
from trt_support import RecordingLogger

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RNG = np.random.default_rng(0)
KERNEL = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
BIAS = RNG.standard_normal(4).astype(np.float32)
X = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)


class Listener(trt.IDebugListener):
    """Keeps a host copy of every debug tensor it is given, with what came with it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def process_debug_tensor(self, addr, location, type, shape, name, stream):  # noqa: A002 - TensorRT's names
        device = torch.device("cuda" if location == trt.TensorLocation.DEVICE else "cpu")
        value = wrap_address(addr, tuple(shape), _TO_KILN[type], device).clone().cpu().numpy()
        self.calls.append(dict(name=name, location=location, type=type, shape=tuple(shape), value=value,
                               stream=stream))
        return True

    @property
    def names(self):
        return [c["name"] for c in self.calls]


def conv_relu_softmax(builder, debug=(), extra_outputs=()):
    """x -> conv -> relu -> softmax -> y, whose conv and relu a build fuses unless one is marked; ``debug`` and
    ``extra_outputs``: the layers ("conv", "relu") whose output to mark as debug tensor / network output."""
    net = builder.create_network(0)
    x = net.add_input("x", trt.float32, (1, 3, 8, 8))
    layers = {"conv": net.add_convolution_nd(x, 4, (3, 3), KERNEL, BIAS)}
    layers["relu"] = net.add_activation(layers["conv"].get_output(0), trt.ActivationType.RELU)
    sm = net.add_softmax(layers["relu"].get_output(0))
    for name, layer in layers.items():
        layer.name = name
        layer.get_output(0).name = f"{name}_out"
    sm.get_output(0).name = "y"
    net.mark_output(sm.get_output(0))
    for name in extra_outputs:
        net.mark_output(layers[name].get_output(0))
    for name in debug:
        assert net.mark_debug(layers[name].get_output(0))
    return net


def build(device, logger=None, **kw):
    logger = logger or RecordingLogger()
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.device = device
    config.clear_flag(trt.BuilderFlag.TF32)  # the same float32 arithmetic in every build compared
    data = builder.build_serialized_network(conv_relu_softmax(builder, **kw), config)
    assert data is not None, logger.errors
    return data, trt.Runtime(logger).deserialize_cuda_engine(data)


def run(engine, device, listener=None, states=None, all_on=None):
    """Execute once on X; returns the outputs by name (host copies)."""
    context = engine.create_execution_context()
    if listener is not None:
        assert context.set_debug_listener(listener) and context.get_debug_listener() is listener
    for name, flag in (states or {}).items():
        assert context.set_tensor_debug_state(name, flag)
    if all_on is not None:
        assert context.set_all_tensors_debug_state(all_on)
    x = torch.from_numpy(X).to(device)
    outs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            outs[name] = torch.empty(tuple(context.get_tensor_shape(name)), device=device)
            context.set_tensor_address(name, outs[name].data_ptr())
    context.set_tensor_address("x", x.data_ptr())
    stream = torch.cuda.Stream() if device == "cuda" else None
    assert context.execute_async_v3(stream.cuda_stream if stream is not None else 0)
    if stream is not None:
        stream.synchronize()
    return {n: t.cpu().numpy() for n, t in outs.items()}, context


@pytest.mark.parametrize("device", DEVICES)
def test_listener_gets_enabled_debug_tensors_unfused(device):
    _, plain = build(device)
    _, marked = build(device, debug=("conv", "relu"))
    _, reference = build(device, extra_outputs=("conv",))  # the conv output as a network output instead
    assert len(marked.engine.report.layers) > len(plain.engine.report.layers), "marking keeps conv and relu apart"
    assert [marked.is_debug_tensor(n) for n in ("conv_out", "relu_out", "x", "y", "nope")] == [True, True] + [False] * 3
    assert marked.num_io_tensors == 2, "debug tensors are not I/O tensors"
    ref, _ = run(reference, device)

    listener = Listener()
    outs, context = run(marked, device, listener, states={"conv_out": True})
    assert listener.names == ["conv_out"], "only the tensors whose debug state is on"
    call = listener.calls[0]
    location = trt.TensorLocation.DEVICE if device == "cuda" else trt.TensorLocation.HOST
    assert (call["location"], call["type"], call["shape"]) == (location, trt.DataType.FLOAT, (1, 4, 6, 6))
    np.testing.assert_allclose(call["value"], ref["conv_out"], rtol=1e-4, atol=1e-4)
    assert (call["value"] < 0).any(), "the conv output before the relu, not a fused conv+relu value"
    np.testing.assert_allclose(outs["y"], ref["y"], rtol=1e-5, atol=1e-6)
    assert context.get_debug_state("conv_out") and not context.get_debug_state("relu_out")

    listener = Listener()
    run(marked, device, listener, all_on=True)
    assert listener.names == ["conv_out", "relu_out"], "every debug tensor, in execution order"
    np.testing.assert_allclose(listener.calls[1]["value"], np.maximum(listener.calls[0]["value"], 0), atol=1e-6)

    listener = Listener()
    run(marked, device, listener, states={"conv_out": True, "relu_out": True}, all_on=False)
    run(marked, device, listener)
    assert listener.calls == [], "no call while every state is off (the default)"
    outs, _ = run(marked, device, None, all_on=True)  # states on, no listener: a plain run
    np.testing.assert_allclose(outs["y"], ref["y"], rtol=1e-5, atol=1e-6)


def test_debug_state_of_names_that_are_not_debug_tensors_as_tensorrt():
    logger = RecordingLogger()
    _, engine = build("cpu", logger, debug=("conv",))
    context = engine.create_execution_context()
    assert not context.get_debug_state("conv_out"), "off until turned on"
    for name in ("relu_out", "x", "y", "nope"):
        assert context.set_tensor_debug_state(name, True) is False
        assert f"{name!r} is not a debug tensor" in logger.errors[-1]
        assert not context.get_debug_state(name)
    assert context.set_all_tensors_debug_state(True) and context.get_debug_state("conv_out")
    assert not context.get_debug_state("relu_out")
    context.debug_listener = listener = Listener()
    assert context.get_debug_listener() is listener and context.set_debug_listener(None)
    with pytest.raises(errors.InputError, match="expected an IDebugListener"):
        context.set_debug_listener(object())


def test_network_mark_unmark_and_is_debug_tensor():
    builder = trt.Builder(RecordingLogger())
    net = conv_relu_softmax(builder)
    conv = net.get_layer(0).get_output(0)
    assert not net.is_debug_tensor(conv)
    assert net.mark_debug(conv) and net.mark_debug(conv) and net.is_debug_tensor(conv)
    assert net.debug_names() == ["conv_out"]
    conv.name = "renamed"
    assert net.debug_names() == ["renamed"], "the tensor is marked, whatever its name at build"
    assert net.unmark_debug(conv) and not net.is_debug_tensor(conv)
    assert net.unmark_debug(conv) is False, "it was not marked"
    other = conv_relu_softmax(builder)
    with pytest.raises(errors.InputError, match="belongs to another network"):
        net.mark_debug(other.get_layer(0).get_output(0))
    _, engine = build("cpu")
    assert not engine.is_debug_tensor("conv_out")


def matmul_relu_model():
    w = numpy_helper.from_array(np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_parsed_network_marks_a_layer_output_and_the_engine_file_keeps_it(tmp_path):
    logger = RecordingLogger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    model = matmul_relu_model()
    assert trt.OnnxParser(network, logger).parse(model.SerializeToString())
    layer = network.get_layer(0)
    assert (layer.name, layer.type_name, layer.num_inputs, layer.num_outputs) == ("matmul", "MatMul", 2, 1)
    m = layer.get_output(0)
    assert m.name == "m" and tuple(m.shape) == (2, 4)
    assert network.mark_debug(m) and network.is_debug_tensor(network.get_layer(0).get_output(0))
    assert not network.is_debug_tensor(network.get_output(0))
    config = builder.create_builder_config()
    config.device = "cpu"
    (tmp_path / "model.plan").write_bytes(builder.build_serialized_network(network, config))
    engine = trt.Runtime(logger).deserialize_cuda_engine((tmp_path / "model.plan").read_bytes())
    assert engine.is_debug_tensor("m") and kiln.Engine.load(tmp_path / "model.plan").debug_names == ["m"]

    context = engine.create_execution_context()
    context.set_debug_listener(listener := Listener())
    context.set_tensor_debug_state("m", True)
    x = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    y = np.empty((2, 4), np.float32)
    assert context.execute_v2([x.ctypes.data, y.ctypes.data])
    from onnx.reference import ReferenceEvaluator
    with_m = onnx.ModelProto()
    with_m.CopyFrom(model)
    with_m.graph.output.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [2, 4]))
    ref_y, ref_m = ReferenceEvaluator(with_m).run(None, {"x": x})
    assert listener.names == ["m"] and listener.calls[0]["stream"] == 0
    np.testing.assert_allclose(listener.calls[0]["value"], ref_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-6)

    class Profiler(trt.IProfiler):
        def __init__(self):
            super().__init__()
            self.layers = []

        def report_layer_time(self, layer_name, ms):
            self.layers.append(layer_name)

    context.profiler = profiler = Profiler()  # a profiled execute (layer by layer) calls the listener too
    assert context.execute_async_v3(0)
    assert listener.names == ["m", "m"] and len(profiler.layers) == engine.num_layers
    np.testing.assert_allclose(listener.calls[1]["value"], ref_m, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def debug_engine() -> bytes:
    return kiln.build(matmul_relu_model(), debug_tensors=["m"]).serialize()


def _edit(data: bytes, change) -> bytes:
    header, plan, weights = fmt.unpack(data)
    change(header)
    return fmt.pack(header, plan, weights)


@pytest.mark.parametrize("change, field, why", [
    (lambda h: h.update(debug_tensors=["nope"]), "'debug_tensors' 0", "not a tensor of the plan"),
    (lambda h: h.update(debug_tensors=["y"]), "'debug_tensors' 0", "not a tensor of the plan"),
    (lambda h: h.update(debug_tensors="m"), "'debug_tensors'", "must be a list"),
    (lambda h: h.update(debug_tensors=[7]), "'debug_tensors' 0", "must be a string"),
    (lambda h: h.update(debug_tensors=[""]), "'debug_tensors' 0", "is empty"),
    (lambda h: h.update(debug_tensors=["m", "m"]), "'debug_tensors' 1", "a second time"),
    (lambda h: h.update(debug_tensors=["m", "x"]), "plan field 'outputs'", "the header names 3"),
    (lambda h: h.pop("debug_tensors"), "plan field 'outputs'", "the header names 1"),
])
def test_tampered_debug_tensor_list_is_refused_on_load(debug_engine, change, field, why):
    assert kiln.Engine.deserialize(debug_engine).debug_names == ["m"]
    with pytest.raises(errors.EngineFormatError) as e:
        kiln.Engine.deserialize(_edit(debug_engine, change))
    assert field in str(e.value) and why in str(e.value), str(e.value)
    assert trt.Runtime(RecordingLogger(trt.ILogger.ERROR)).deserialize_cuda_engine(_edit(debug_engine, change)) \
        is None


def test_kiln_build_debug_tensors():
    model = matmul_relu_model()
    plain = kiln.build(model)
    assert plain.debug_names == [] and "debug_tensors" not in json.dumps(fmt.unpack(plain.serialize())[0])
    with pytest.raises(errors.BuildError, match=r"debug tensor\(s\) \['nope'\] are not tensors of the model"):
        kiln.build(model, debug_tensors=["nope"])
    engine = kiln.build(model, debug_tensors=["y", "x", "m"])  # an output and an input may be debug tensors too
    seen = []
    x = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    out = engine.create_execution_context().infer({"x": x}, debug=lambda values: seen.extend(
        (n, t.clone().numpy()) for n, t in values))
    assert [n for n, _ in seen] == ["x", "m", "y"], "in execution order: the input first"
    got = dict(seen)
    np.testing.assert_array_equal(got["x"], x)
    w = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_allclose(got["m"], x @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["y"], np.maximum(got["m"], 0), atol=1e-6)
    np.testing.assert_allclose(out["y"], got["y"], atol=1e-6)
    assert list(out) == ["y"], "debug tensors are not outputs of a run"


def test_debug_tensors_survive_refit_and_weights_from(tmp_path):
    """A refit and a weight-stripped load replay the build's passes: the debug outputs are replayed with them."""
    model = matmul_relu_model()
    onnx.save(model, tmp_path / "model.onnx")
    w = numpy_helper.to_array(model.graph.initializer[0])
    x = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)

    def debug_values(engine):
        seen = {}
        engine.create_execution_context().infer({"x": x}, debug=lambda values: seen.update(
            (n, t.clone().numpy()) for n, t in values))
        return seen

    engine = kiln.build(model, refittable=True, debug_tensors=["m"])
    stripped = kiln.Engine.deserialize(engine.serialize(weights=False), weights_from=tmp_path / "model.onnx")
    assert stripped.debug_names == ["m"]
    np.testing.assert_allclose(debug_values(stripped)["m"], x @ w, rtol=1e-5, atol=1e-6)
    refitter = kiln.Refitter(engine)
    refitter.set_named_weights("w", w * 2)
    refitter.refit()
    np.testing.assert_allclose(debug_values(engine)["m"], x @ (w * 2), rtol=1e-5, atol=1e-5)
