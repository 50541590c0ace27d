"""A dynamic model built without a profile says which dims are unbounded and how to give shapes."""
import logging
from pathlib import Path

import kiln

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny_resnet.onnx"


def test_dynamic_model_without_profile_warns_with_the_dims_and_the_fix(caplog):
    with caplog.at_level(logging.WARNING, logger="kiln.build"):
        engine = kiln.build(str(EXAMPLE))
    notes = [n for n in engine.report.notes if "without an optimization profile" in n]
    assert len(notes) == 1 and "'image': batch" in notes[0] and "Profile.of(image=" in notes[0]
    assert "--min-shapes" in notes[0]
    assert any("without an optimization profile" in r.getMessage() for r in caplog.records)


def test_profile_or_static_model_is_quiet(caplog):
    with caplog.at_level(logging.WARNING, logger="kiln.build"):
        engine = kiln.build(str(EXAMPLE), profiles=(kiln.Profile.of(image=((1, 3, 64, 64), (2, 3, 64, 64),
                                                                          (4, 3, 64, 64))),))
    assert not [n for n in engine.report.notes if "without an optimization profile" in n]
    assert not [r for r in caplog.records if "without an optimization profile" in r.getMessage()]
