"""NaN and Inf propagate as ONNX says on every tactic: an engine's outputs have the same NaN/Inf pattern as
onnxruntime's for all-NaN and one-Inf inputs, at every optimization level (a oneDNN ReLU post-op once turned
NaN into finite logits)."""
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
    one_inf = base.copy()
    one_inf[0, 1, 10, 20] = np.inf
    one_neg_inf = base.copy()
    one_neg_inf[-1, 2, 40, 3] = -np.inf
    one_nan = base.copy()
    one_nan[0, 0, 0, 0] = np.nan
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
