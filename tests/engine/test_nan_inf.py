"""NaN and Inf propagate as ONNX says on every tactic: an engine's outputs have the same NaN/Inf pattern as
onnxruntime's for all-NaN and one-Inf inputs, at every optimization level (a oneDNN ReLU post-op once turned
NaN into finite logits): the bundled example, ResNet-50 (random weights) and a transformer encoder (BERT-base's
own inputs are integer ids, where NaN cannot occur)."""
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import kiln

DEVICE = os.environ.get("KILN_TEST_DEVICE", "cpu")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny_resnet.onnx"


def _patterns(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def _hostile_inputs(shape) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal(shape).astype(np.float32)
    n = base.size
    one_inf, one_neg_inf, one_nan = base.copy(), base.copy(), base.copy()
    one_inf.reshape(-1)[n // 3 + 7] = np.inf
    one_neg_inf.reshape(-1)[n - n // 5] = -np.inf
    one_nan.reshape(-1)[0] = np.nan
    return {"all NaN": np.full(shape, np.nan, np.float32), "one +Inf": one_inf, "one -Inf": one_neg_inf,
            "one NaN": one_nan}


@pytest.fixture(scope="module")
def example():
    return onnx.load(EXAMPLE)


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4, 5])
def test_example_engine_keeps_nan_and_inf_pattern(example, level):
    engine = kiln.build(example, kiln.BuilderConfig(device=DEVICE, optimization_level=level,
                                                    profiles=(kiln.Profile.of(image=((1, 3, 64, 64), (2, 3, 64, 64),
                                                                                     (4, 3, 64, 64))),)))
    ctx = engine.create_execution_context()
    for what, x in _hostile_inputs((2, 3, 64, 64)).items():
        want = _patterns(example, {"image": x})
        got = ctx.infer({"image": x})
        (got,) = got.values()
        got = np.asarray(got)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}, level {level}: NaN pattern")
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg=f"{what}, level {level}: +Inf")
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"{what}, level {level}: -Inf")
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-3, atol=1e-3, err_msg=f"{what}, level {level}")


def _exported(make, shape, tmp_path):
    import sys

    import torch
    sys.path.insert(0, str(EXAMPLE.parents[1]))
    from benchmarks.models import export_onnx
    model, axes = make()
    x = torch.randn(*shape)
    path = export_onnx(model, (x,), tmp_path / "m.onnx", axes)
    return onnx.load(path), x.numpy()


def _encoder():
    import torch
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, activation="gelu", batch_first=True)
    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(), {"x": {0: "batch"}}


def _check_patterns(model, shape, levels):
    for level in levels:
        ctx = kiln.build(model, kiln.BuilderConfig(device=DEVICE, optimization_level=level)).create_execution_context()
        for what, x in _hostile_inputs(shape).items():
            want = _patterns(model, {"x": x})
            got = np.asarray(next(iter(ctx.infer({"x": x}).values())))
            for name, f in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
                np.testing.assert_array_equal(f(got), f(want), err_msg=f"{what}, level {level}: {name} pattern")


def test_transformer_encoder_keeps_nan_and_inf_pattern(tmp_path):
    """Softmax, LayerNorm, GELU and attention fusions (the float-input part of BERT)."""
    model, _ = _exported(_encoder, (2, 48, 64), tmp_path)
    _check_patterns(model, (2, 48, 64), [0, 3])


def test_resnet50_keeps_nan_and_inf_pattern_at_every_level(tmp_path):  # ~15 s on 2 cores (64x64 images)
    from benchmarks.models import resnet50
    model, _ = _exported(lambda: (lambda m: (m[0], m[2]))(resnet50()), (2, 3, 64, 64), tmp_path)
    _check_patterns(model, (2, 3, 64, 64), [0, 1, 2, 3, 4, 5])
