"""A dynamic dim is folded only when it is constant over the whole profile.

The pattern of text recognizers: a strided convolution downsamples a dynamic width, then the exporter's
Shape -> Gather -> Concat -> Reshape reads the downsampled width back. When both probe runs landed in one
stride bucket (max width 1280: probes 1279 and 1277 both give 159 after stride 8), that width was baked into
the Reshape target and the engine failed at every other width. The build is checked at every max width
1..2048 (opt-in ``-m slow``; CI runs a spread of them and the widths that used to fail)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import kiln


def _downsample_reshape(stride: int) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((4, 1, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[1, stride]),  # [1, 4, 2, ceil(W / stride)]
             helper.make_node("Shape", ["c"], ["s"]),
             helper.make_node("Gather", ["s", "i3"], ["wd"], axis=0),
             helper.make_node("Unsqueeze", ["wd", "ax0"], ["wd1"]),
             helper.make_node("Concat", ["wd1", "m1"], ["target"], axis=0),
             helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 3, 1, 2]),
             helper.make_node("Reshape", ["ct", "target"], ["y"])]  # [ceil(W / stride), 8]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(3, np.int64), "i3"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0"),
             numpy_helper.from_array(np.array([-1], np.int64), "m1")]
    g = helper.make_graph(nodes, "ocr_like", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 1, 2, "W"])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


MODELS = {s: _downsample_reshape(s) for s in (3, 8)}


def _check(max_width: int, stride: int) -> None:
    model = MODELS[stride]
    w = model.graph.initializer[0]
    weight = numpy_helper.to_array(w).reshape(4)
    engine = kiln.build(model, kiln.BuilderConfig(optimization_level=2, profiles=(
        kiln.Profile.of(x=((1, 1, 2, 1), (1, 1, 2, max_width), (1, 1, 2, max_width))),)))
    ctx = engine.create_execution_context()
    for width in sorted({1, max(1, max_width // 3), max(1, max_width - 1), max_width}):
        x = np.random.default_rng(width).standard_normal((1, 1, 2, width)).astype(np.float32)
        kept = x[0, 0, :, ::stride]                                    # [2, W']
        want = (weight[:, None, None] * kept[None]).transpose(2, 0, 1).reshape(kept.shape[1], 8)
        got = ctx.infer({"x": x})["y"]
        assert got.shape == want.shape, f"max width {max_width}, stride {stride}, run at {width}: {got.shape}"
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


SPREAD = sorted(set(range(1, 25)) | set(range(25, 2049, 97)) | {255, 256, 257, 1024, 1280, 2047, 2048})


@pytest.mark.parametrize("stride", [3, 8])
def test_downsample_then_reshape_spread_of_max_widths(stride):
    for max_width in SPREAD:
        _check(max_width, stride)


@pytest.mark.slow
@pytest.mark.parametrize("stride", [3, 8])
def test_downsample_then_reshape_every_max_width(stride):
    for max_width in range(1, 2049):
        _check(max_width, stride)
