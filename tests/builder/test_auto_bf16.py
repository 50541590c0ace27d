"""bf16="auto" (BuilderConfig) / --auto-bf16: bf16 layers where the device computes bf16 natively, else float32."""
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.engine.device_info import native_bf16

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "tiny_resnet.onnx")
PROFILE = kiln.Profile.of(image=((2, 3, 64, 64),) * 3)


def test_auto_bf16_follows_the_cpu_and_says_so():
    native, why = native_bf16("cpu")
    engine = kiln.build(EXAMPLE, kiln.BuilderConfig(bf16="auto", profiles=(PROFILE,)))
    assert engine.header["config"]["bf16"] is native  # the stored config holds the decision, not "auto"
    note = next(n for n in engine.report.notes if n.startswith("bf16='auto'"))
    assert why in note
    assert any("bf16" in str(layer.precision) for layer in engine.report.layers) == native
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    ref = kiln.build(EXAMPLE, kiln.BuilderConfig(profiles=(PROFILE,))).create_execution_context().infer({"image": x})
    got = engine.create_execution_context().infer({"image": x})
    for k in ref:
        cos = float(np.dot(ref[k].ravel(), got[k].ravel()) / (np.linalg.norm(ref[k]) * np.linalg.norm(got[k])))
        assert cos > 0.995


def test_auto_is_decided_once_and_explicit_values_pass_through():
    config, note = kiln.BuilderConfig(bf16="auto").resolve_auto()
    assert config.bf16 in (True, False) and note.startswith("bf16='auto'")
    assert kiln.BuilderConfig(bf16=True).resolve_auto() == (kiln.BuilderConfig(bf16=True), None)


@pytest.mark.parametrize("bad", ["yes", 1.5, "AUTO"])
def test_bad_bf16_values_are_refused(bad):
    with pytest.raises(ValueError, match="bf16 must be"):
        kiln.BuilderConfig(bf16=bad)


def test_cli_auto_bf16(tmp_path):
    from kiln.cli.main import main
    out = tmp_path / "m.engine"
    assert main(["build", EXAMPLE, "-o", str(out), "--auto-bf16", "--shapes", "image:2x3x64x64"]) == 0
    engine = kiln.Engine.load(out)
    assert engine.header["config"]["bf16"] is native_bf16("cpu")[0]
