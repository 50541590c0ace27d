"""The nine model-zoo "light" models shipped inside the onnx package, checked against their stored outputs.

Inputs are made the way onnx's backend test runner makes them for these models: for the one
non-initializer input, ``arange(n).reshape(shape) / n`` in float32 (dims without a value -> 1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import kiln

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
    got = kiln.interpret(graph, {input_name: x})
    out = got[model.graph.output[0].name]
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL, err_msg=name)
