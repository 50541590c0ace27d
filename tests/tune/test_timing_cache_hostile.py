"""A timing cache is only speed and untrusted: a deeply nested, oversized or malformed file is a warning and an
empty cache, malformed entries are dropped, and an entry naming a tactic outside the layer's candidates (never
checked against the reference) is not used: the layer is timed again."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import kiln
from kiln.tune import TimingCache
from kiln.tune import cache as timing_cache

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny_resnet.onnx"
PROFILE = (kiln.Profile.fixed({"image": (2, 3, 64, 64)}),)


def _build(**kw):
    return kiln.build(str(EXAMPLE), device="cpu", profiles=PROFILE, **kw)


def _file(entries) -> str:
    return json.dumps({"format": "kiln-timing-cache", "version": 1, "entries": entries})


@pytest.mark.parametrize("text", [
    '{"format": "kiln-timing-cache", "version": 1, "entries": ' + "[" * 200000 + "]" * 200000 + "}",
    '{"format": "kiln-timing-cache", "version": 1, "entries": {"k": ' + "{\"a\": " * 100000 + "1" + "}" * 100000
    + "}}",
    '{"format": "kiln-timing-cache", "version": ' + "9" * 5000 + "}",
])
def test_deep_or_huge_json_is_ignored_with_a_warning(tmp_path, text):
    p = tmp_path / "t.json"
    p.write_text(text)
    with pytest.warns(RuntimeWarning, match="timing cache .* is ignored"):
        assert len(TimingCache.load(p)) == 0


def test_oversized_file_is_ignored(tmp_path, monkeypatch):
    p = tmp_path / "t.json"
    p.write_text(_file({f"k{i}": {"tactic": {"name": "torch", "params": {}}} for i in range(100)}))
    monkeypatch.setattr(timing_cache, "MAX_FILE_BYTES", 1000)
    with pytest.warns(RuntimeWarning, match="is ignored.*over"):
        assert len(TimingCache.load(p)) == 0


def test_malformed_entries_are_dropped(tmp_path):
    good = {"tactic": {"name": "torch", "params": {}}, "times": {"torch": 1.0}}
    p = tmp_path / "t.json"
    p.write_text(_file({"good": good, "no name": {"tactic": {}}, "params list": {"tactic": {"name": "t", "params": []}},
                        "times list": {"tactic": {"name": "t"}, "times": []}, "not a dict": 3,
                        "rejected str": {"tactic": {"name": "t"}, "rejected": "x"}}))
    with pytest.warns(RuntimeWarning, match="5 malformed entries"):
        assert TimingCache.load(p).entries == {"good": good}


def test_foreign_tactic_in_a_hit_is_timed_again(tmp_path, count_timings):
    path = tmp_path / "timing.json"
    first = _build(timing_cache=str(path))
    d = json.loads(path.read_text())
    for e in d["entries"].values():  # every hit now names a tactic no layer offers, with parameters never checked
        e["tactic"] = {"name": "onednn", "params": {"block": 1 << 40}}
    path.write_text(json.dumps(d))
    count_timings.clear()
    again = _build(timing_cache=str(path))
    assert count_timings and again.report.tuning["cache_hits"] == 0
    assert again.report.tuning["timed"] > 0
    assert not any("block" in v.get("params", {}) for v in again.tactic_choices.values())
    assert set(again.tactic_choices) == set(first.tactic_choices)


def test_cached_choice_that_fails_its_check_is_tuned_again(tmp_path, count_timings):
    """A hit naming one of the layer's own candidates is still run once against the reference: onednn_gemm
    (1x1 convolutions only) written for every layer fails that check on the 3x3 layers, which are timed again,
    and the engine computes what the first one did."""
    import numpy as np
    path = tmp_path / "timing.json"
    first = _build(timing_cache=str(path))
    d = json.loads(path.read_text())
    for e in d["entries"].values():
        e["tactic"] = {"name": "onednn_gemm", "params": {}}
    path.write_text(json.dumps(d))
    count_timings.clear()
    again = _build(timing_cache=str(path))
    assert count_timings and again.report.tuning["timed"] > 0
    assert any("failed its check" in n for n in again.report.notes + [str(l) for l in again.report.layers]) or \
        again.report.tuning["cache_hits"] < len(d["entries"])
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want = first.create_execution_context().infer({"image": x})
    got = again.create_execution_context().infer({"image": x})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)
