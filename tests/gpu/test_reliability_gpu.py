"""Reliability on the GPU: recurrent models in fp16 with state inputs, CUDA-graph capture of models with
Resize, recurrent and control-flow ops, fp32 engines that compute in float32 (no TF32 unless asked for)."""
import io

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import kiln

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


class _Recurrent(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(16, 32, batch_first=True)
        self.fc = torch.nn.Linear(32, 5)
        self.cell = cell

    def forward(self, x, h, *c):
        y, state = self.rnn(x, (h, c[0]) if self.cell == "lstm" else h)
        return (self.fc(y),) + (tuple(state) if self.cell == "lstm" else (state,))


def _export(module, args, names) -> onnx.ModelProto:
    f = io.BytesIO()
    torch.onnx.export(module.eval(), args, f, input_names=names, dynamo=False)
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("fp16", [False, True])
def test_recurrent_with_state_inputs_runs_under_cuda_graphs(cell, fp16):
    torch.manual_seed(0)
    m = _Recurrent(cell)
    x, h, c = torch.randn(2, 20, 16), torch.randn(1, 2, 32), torch.randn(1, 2, 32)
    args = (x, h, c) if cell == "lstm" else (x, h)
    names = ["x", "h", "c"][:len(args)]
    engine = kiln.build(_export(m, args, names), device="cuda", fp16=fp16)
    ctx = engine.create_execution_context()
    feed = {n: a.numpy() for n, a in zip(names, args)}
    with torch.no_grad():
        want = [t.numpy() for t in m(*args)]
    for _ in range(2):  # the second call replays the captured graph
        got = list(ctx.infer(feed).values())
    tol = 2e-2 if fp16 else 1e-4
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * max(1.0, float(np.abs(w).max())))
    assert not [n for n in ctx.notes if "capture failed" in n], ctx.notes


def _resize_model(mode: str) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "", "scales"], ["y"], mode=mode)]
    g = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TP.FLOAT, ["n", 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"),
                           numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)  # older onnxruntimes


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_is_captured_in_a_cuda_graph(mode):
    model = _resize_model(mode)
    engine = kiln.build(model, device="cuda", profiles=(kiln.Profile.of(x=((1, 3, 16, 16), (2, 3, 32, 32),
                                                                             (4, 3, 64, 64))),))
    ctx = engine.create_execution_context()
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 32, 32), (2, 3, 32, 32), (1, 3, 16, 24)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(ctx.infer({"x": x})["y"], sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    assert not [n for n in ctx.notes if "capture failed" in n], ctx.notes


def test_fp32_conv_engine_is_float32_accurate():
    """TF32 (10-bit mantissa) gives ~1e-3 relative error on a wide convolution; float32 stays near 1e-6."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 256, 3, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "wide",
                          [helper.make_tensor_value_info("x", TP.FLOAT, [1, 256, 32, 32])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 256, 32, 32)).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), padding=1).numpy()
    got = kiln.build(model, device="cuda").create_execution_context().infer({"x": x})["y"]
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    fast = kiln.build(model, device="cuda", tf32=True).create_execution_context().infer({"x": x})["y"]
    assert np.abs(fast - want).max() / np.abs(want).max() < 5e-3  # allowed, and measurably less exact


def test_if_on_a_host_input_runs_under_cuda_graphs_for_each_value():
    """silero-vad's shape: an int64 sample-rate input picks the If branch. It stays on the host, so capture does
    not read the device, and each value gets its own graph (a graph baked for 16000 must not answer 8000)."""
    inits = [numpy_helper.from_array(np.array(16000, np.int64), "sr16k")]

    def branch(name, k):
        return helper.make_graph([helper.make_node("Mul", ["x", name], [f"out_{name}"])], f"b_{name}", [],
                                 [helper.make_tensor_value_info(f"out_{name}", TP.FLOAT, [2, 3])],
                                 [numpy_helper.from_array(np.array(k, np.float32), name)])
    nodes = [helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["y"], then_branch=branch("two", 2.0), else_branch=branch("three", 3.0))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [2, 3]),
                                       helper.make_tensor_value_info("sr", TP.INT64, [])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [2, 3])], inits)
    engine = kiln.build(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                        kiln.BuilderConfig(device="cuda"))
    ctx = engine.create_execution_context()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for sr, k in [(16000, 2.0), (8000, 3.0), (16000, 2.0), (8000, 3.0)]:
        np.testing.assert_array_equal(ctx.infer({"x": x, "sr": np.array(sr, np.int64)})["y"], x * k)
    assert not [n for n in ctx.notes if "capture failed" in n], ctx.notes


def test_if_body_gathering_with_a_constant_index_runs_under_cuda_graphs():
    """silero-vad's If bodies take state[k] with a constant k and pad with ConstantOfShape: the host constants
    stay on the host, and Gather and ConstantOfShape make their results on the device without copying a host
    tensor there (a pageable copy, which capture refuses: on the H100 every shape of silero ran eagerly)."""
    def branch(name, k):  # state[k], then two zeros from ConstantOfShape (silero pads its STFT input so)
        nodes = [helper.make_node("Gather", ["state", name], [f"row_{name}"], axis=0),
                 helper.make_node("ConstantOfShape", [f"two_{name}"], [f"pad_{name}"],
                                  value=numpy_helper.from_array(np.array([0.0], np.float32))),
                 helper.make_node("Concat", [f"row_{name}", f"pad_{name}"], [f"out_{name}"], axis=0)]
        return helper.make_graph(nodes, f"b_{name}", [], [helper.make_tensor_value_info(f"out_{name}", TP.FLOAT, [5])],
                                 [numpy_helper.from_array(np.array(k, np.int64), name),
                                  numpy_helper.from_array(np.array([2], np.int64), f"two_{name}")])
    nodes = [helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["y"], then_branch=branch("first", 0), else_branch=branch("last", -1))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("state", TP.FLOAT, [2, 3]),
                                       helper.make_tensor_value_info("sr", TP.INT64, [])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [5])],
                          [numpy_helper.from_array(np.array(16000, np.int64), "sr16k")])
    engine = kiln.build(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                        kiln.BuilderConfig(device="cuda"))
    ctx = engine.create_execution_context()
    state = np.arange(6, dtype=np.float32).reshape(2, 3)
    for sr, row in [(16000, 0), (8000, 1), (16000, 0)]:
        np.testing.assert_array_equal(ctx.infer({"state": state, "sr": np.array(sr, np.int64)})["y"],
                                      np.concatenate([state[row], np.zeros(2, np.float32)]))
    assert not [n for n in ctx.notes if "capture failed" in n], ctx.notes


def test_if_body_shape_arithmetic_runs_under_cuda_graphs():
    """silero-vad's decoder reshapes by Shape of a device tensor inside its If branches: the body's Shape, Gather
    and Concat run on the host (plan_body_placement), so capture neither copies a pageable list to the device
    nor reads the device back (on the H100 every shape of silero ran eagerly before)."""
    def branch(name, k):
        nodes = [helper.make_node("Shape", ["state"], [f"s_{name}"]),
                 helper.make_node("Gather", [f"s_{name}", f"i_{name}"], [f"n_{name}"], axis=0),
                 helper.make_node("Concat", [f"n_{name}", f"minus1_{name}"], [f"t_{name}"], axis=0),
                 helper.make_node("Reshape", ["state", f"t_{name}"], [f"r_{name}"]),
                 helper.make_node("Mul", [f"r_{name}", f"k_{name}"], [f"out_{name}"])]
        return helper.make_graph(nodes, f"b_{name}", [], [helper.make_tensor_value_info(f"out_{name}", TP.FLOAT, None)],
                                 [numpy_helper.from_array(np.array([0], np.int64), f"i_{name}"),
                                  numpy_helper.from_array(np.array([-1], np.int64), f"minus1_{name}"),
                                  numpy_helper.from_array(np.array(k, np.float32), f"k_{name}")])
    nodes = [helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["y"], then_branch=branch("two", 2.0), else_branch=branch("three", 3.0))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("state", TP.FLOAT, ["n", 2, 3]),
                                       helper.make_tensor_value_info("sr", TP.INT64, [])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)],
                          [numpy_helper.from_array(np.array(16000, np.int64), "sr16k")])
    engine = kiln.build(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                        kiln.BuilderConfig(device="cuda", profiles=(kiln.Profile.of(state=((1, 2, 3), (2, 2, 3), (4, 2, 3))),)))
    ctx = engine.create_execution_context()
    for n, sr, k in [(2, 16000, 2.0), (3, 8000, 3.0), (2, 16000, 2.0), (1, 8000, 3.0)]:
        state = np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)
        np.testing.assert_array_equal(ctx.infer({"state": state, "sr": np.array(sr, np.int64)})["y"],
                                      state.reshape(n, -1) * k)
    assert not [n for n in ctx.notes if "capture failed" in n], ctx.notes


def test_if_choosing_a_reshape_target_runs_under_cuda_graphs():
    """A branch that only picks a shape (Concat of constants) hands it back on the host (host_outputs), so the
    outer Reshape reads it without a device round trip and capture succeeds for both branches."""
    def branch(name, rows):
        return helper.make_graph([helper.make_node("Concat", [f"a_{name}", f"b_{name}"], [f"t_{name}"], axis=0)],
                                 name, [], [helper.make_tensor_value_info(f"t_{name}", TP.INT64, [2])],
                                 [numpy_helper.from_array(np.array([rows], np.int64), f"a_{name}"),
                                  numpy_helper.from_array(np.array([-1], np.int64), f"b_{name}")])
    nodes = [helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["target"], then_branch=branch("two", 2), else_branch=branch("three", 3)),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [6]),
                                       helper.make_tensor_value_info("sr", TP.INT64, [])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)],
                          [numpy_helper.from_array(np.array(16000, np.int64), "sr16k")])
    engine = kiln.build(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                        kiln.BuilderConfig(device="cuda"))
    ctx = engine.create_execution_context()
    x = np.arange(6, dtype=np.float32)
    for sr, rows in [(16000, 2), (8000, 3), (16000, 2)]:
        np.testing.assert_array_equal(ctx.infer({"x": x, "sr": np.array(sr, np.int64)})["y"], x.reshape(rows, -1))
    assert not [n for n in ctx.notes if "capture failed" in n], ctx.notes


@pytest.mark.parametrize("kind", ["numpy", "debug"])
def test_two_pending_runs_under_cuda_graphs_keep_their_own_results(kind):
    """A handle read after a second infer_async has replayed the same CUDA graph still gives its own run's values
    (numpy outputs and debug tensors are read in wait(), after the context's lock)."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TP.FLOAT, [64])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [64])])
    engine = kiln.build(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                        kiln.BuilderConfig(device="cuda"), debug_tensors=["r"])
    ctx = engine.create_execution_context()
    a, b = np.arange(64, dtype=np.float32), -np.arange(64, dtype=np.float32) - 1
    seen = []
    feed = (lambda x: {"x": x}) if kind == "numpy" else (lambda x: {"x": torch.from_numpy(x).cuda()})
    debug = None if kind == "numpy" else (lambda values: seen.append(dict(values)["r"].cpu().numpy().copy()))
    ctx.infer(feed(a))  # capture
    first = ctx.infer_async(feed(a), debug=debug)
    ctx.infer_async(feed(b)).wait()
    y = first.wait()["y"]
    np.testing.assert_array_equal(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y), a * np.maximum(a, 0))
    if kind == "debug":
        np.testing.assert_array_equal(seen[-1], np.maximum(a, 0))
