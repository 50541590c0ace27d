"""The nine model-zoo "light" models shipped inside the onnx package, checked against their stored outputs.

Inputs are made the way onnx's backend test runner makes them for these models: for the one
non-initializer input, ``arange(n).reshape(shape) / n`` in float32 (dims without a value -> 1).
"""
from __future__ import annotations

import os

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import kiln

# KILN_TEST_DEVICE=cuda runs the same checks on the GPU (numpy results come back to the host).
DEVICE = os.environ.get("KILN_TEST_DEVICE", "cpu")

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
          "vgg19", "zfnet512"]
RTOL, ATOL = 1e-3, 1e-7


def runner_input(model: onnx.ModelProto) -> tuple[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    (x,) = [i for i in model.graph.input if i.name not in inits]
    shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in x.type.tensor_type.shape.dim)
    n = int(np.prod(shape))
    return x.name, (np.arange(n).reshape(shape) / n).astype(np.float32)


def test_all_light_models_listed():
    assert sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx")) == sorted(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_light_model(name):
    path = LIGHT / f"light_{name}.onnx"
    model = onnx.load(path)
    input_name, x = runner_input(model)
    expected = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"light_{name}_output_0.pb")))
    graph = kiln.parse(path)
    got = _host(kiln.interpret(graph, {input_name: x}, device=DEVICE))
    out = got[model.graph.output[0].name]
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL, err_msg=name)


def randomized(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The model with each ConstantOfShape weight (every light model's weights are one constant, so every
    class scores the same) replaced by an initializer of the same constant times uniform(0.5, 1.5):
    activations keep their scale and sign, BatchNorm variances stay positive, and channels differ.
    The input of the last node (the logits, before Softmax) is added as an output."""
    rng = np.random.default_rng(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    for n in m.graph.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in inits:
            shape = tuple(numpy_helper.to_array(inits[n.input[0]]))
            value = float(numpy_helper.to_array(n.attribute[0].t).reshape(-1)[0])
            w = (value * rng.uniform(0.5, 1.5, shape)).astype(np.float32)
            m.graph.initializer.append(numpy_helper.from_array(w, n.output[0]))
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    last_in = m.graph.node[-1].input[0]
    m.graph.output.append(onnx.helper.make_tensor_value_info(last_in, onnx.TensorProto.FLOAT, None))
    return m


# alexnet, vgg19 and zfnet512 are left out here: their fully connected layers hold 60-140M weights, and
# randomizing them and handing them to onnxruntime costs 15-40 s each; their ops (Conv, Gemm, LRN, MaxPool,
# Dropout, Softmax) all occur in the models below, and test_light_model still runs them.
RANDOM_WEIGHT_MODELS = ["densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet"]


@pytest.mark.parametrize("name", RANDOM_WEIGHT_MODELS)
def test_light_model_random_weights_vs_onnxruntime(name):
    """The stored outputs are uniform (constant weights); random weights make the logits tell classes apart."""
    ort = pytest.importorskip("onnxruntime")
    model = randomized(onnx.load(LIGHT / f"light_{name}.onnx"))
    input_name, x = runner_input(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the plain graph, no fusions
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    want = sess.run(None, {input_name: x})
    got = _host(kiln.interpret(kiln.parse(model), {input_name: x}, device=DEVICE))
    for out, w in zip(model.graph.output, want):
        assert np.ptp(w) > 0, f"{out.name} is constant: the test would not see wrong values"
        np.testing.assert_allclose(got[out.name], w, rtol=RTOL, atol=1e-5 * np.abs(w).max(),
                                   err_msg=f"{name} output {out.name}")


def _host(outputs: dict) -> dict:
    return {k: v.cpu().numpy() if hasattr(v, "cpu") else v for k, v in outputs.items()}
