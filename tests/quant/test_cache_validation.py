"""A calibration cache is untrusted input: a scale no kernel can use (zero, negative, NaN, infinite, subnormal,
a range past float32) refuses the build with the tensor named; a suspicious one (1000x off the median of the
others, a range past float16) builds with a warning naming it; malformed, deeply nested or oversized files are
CalibrationCacheError, never a RecursionError or ValueError. Both formats: Kiln's JSON and TensorRT's text."""
import json
import logging
import struct

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.errors import CalibrationCacheError
from kiln.quant import Calibration
from kiln.quant import cache as cal_cache

rng = np.random.default_rng(0)
TARGET = "r1"  # the input of the second convolution: the tensor tampered with


def small_cnn(path):
    """conv-relu-conv-relu-gemm with random weights: three INT8 layers, scales for x, r1 and f."""
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32)
    wf = rng.normal(0, 0.1, (10, 8 * 8 * 8)).astype(np.float32)
    g = helper.make_graph([
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(wf, "wf")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """(model path, the scales a real calibration gave)."""
    d = tmp_path_factory.mktemp("cachecheck")
    path = str(d / "cnn.onnx")
    small_cnn(path)
    batches = [{"x": rng.normal(0, 1, (4, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    e = kiln.build(path, int8=True, int8_calibrator=batches, calibration_cache=str(d / "good.json"))
    assert [l.precision for l in e.report.layers if l.op.startswith("kiln::Q")] == ["int8"] * 3
    scales = Calibration.load(d / "good.json").scales
    assert set(scales) == {"x", TARGET, "f"}
    return path, scales


def write_cache(tmp_path, scales: dict, fmt: str):
    """A cache holding ``scales`` as Kiln JSON or TensorRT text (written by hand: a tampered file)."""
    if fmt == "json":
        p = tmp_path / "calib.json"
        p.write_text(json.dumps({"format": "kiln-calibration", "version": 1, "method": "entropy2", "scales": scales}))
    else:
        p = tmp_path / "calib.cache"
        lines = ["TRT-8601-EntropyCalibration2"] + [f"{k}: {struct.pack('>f', v).hex()}" for k, v in scales.items()]
        p.write_text("\n".join(lines) + "\n")
    return p


UNUSABLE = {  # scale: words the refusal says
    "zero": (0.0, "not positive"), "negative": (-0.02, "not positive"), "nan": (float("nan"), "not finite"),
    "inf": (float("inf"), "not finite"), "-inf": (float("-inf"), "not finite"),
    "subnormal": (1e-40, "subnormal"), "past float32": (3e36, "past float32"),
}


@pytest.mark.parametrize("fmt", ["json", "trt"])
@pytest.mark.parametrize("case", list(UNUSABLE))
def test_unusable_scale_refuses_the_build(calibrated, tmp_path, fmt, case):
    path, scales = calibrated
    value, words = UNUSABLE[case]
    p = write_cache(tmp_path, {**scales, TARGET: value}, fmt)
    with pytest.raises(CalibrationCacheError, match=f"tensor '{TARGET}'.*{words}"):
        Calibration.load(p)
    with pytest.raises(kiln.BuildError, match=f"tensor '{TARGET}'") as e:  # (the pipeline names the pass too)
        kiln.build(path, int8=True, calibration_cache=str(p))
    assert isinstance(e.value.__cause__, CalibrationCacheError)


@pytest.mark.parametrize("fmt", ["json", "trt"])
@pytest.mark.parametrize("factor, words", [(1000.0, "x the median"), (1e-4, "of the median")])
def test_outlier_scale_builds_with_a_warning_naming_the_tensor(calibrated, tmp_path, caplog, fmt, factor, words):
    path, scales = calibrated
    p = write_cache(tmp_path, {**scales, TARGET: scales[TARGET] * factor}, fmt)
    with caplog.at_level(logging.WARNING, logger="kiln.quant"), \
            pytest.warns(RuntimeWarning, match=f"tensor '{TARGET}'.*{words}"):
        e = kiln.build(path, int8=True, calibration_cache=str(p))
    assert any(TARGET in r.getMessage() and str(p) in r.getMessage() for r in caplog.records)
    assert [l.precision for l in e.report.layers if l.op.startswith("kiln::Q")] == ["int8"] * 3
    assert any("calibration cache" in n and TARGET in n for n in e.report.notes), "the build report names it"
    with pytest.warns(RuntimeWarning):
        flagged = Calibration.load(p).flagged  # what the build report can show
    assert len(flagged) == 1 and f"'{TARGET}'" in flagged[0]


def test_range_past_float16_is_flagged(tmp_path):
    p = write_cache(tmp_path, {"a": 600.0, "b": 700.0, "c": 0.5 * 1000}, "json")
    with pytest.warns(RuntimeWarning, match="float16"):
        flagged = Calibration.load(p).flagged
    assert {f.split("'")[1] for f in flagged} == {"a", "b"}


def test_good_cache_is_quiet(calibrated, tmp_path, recwarn):
    _, scales = calibrated
    assert Calibration.load(write_cache(tmp_path, scales, "json")).flagged == []
    assert not [w for w in recwarn if "calibration cache" in str(w.message)]


def test_two_scales_an_outlier_apart(tmp_path):
    # the median must leave the tensor out: with both in, a 1000x outlier is only ~2x their median
    with pytest.warns(RuntimeWarning):
        flagged = Calibration.load(write_cache(tmp_path, {"a": 0.01, "b": 10.0}, "json")).flagged
    assert len(flagged) == 2  # (which one is wrong is not knowable from two: both are named)


def test_smoothing_factors_must_be_positive_and_finite(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"format": "kiln-calibration", "scales": {"a": 0.1}, "smoothing": {"a": [1.0, -2.0]}}))
    with pytest.raises(CalibrationCacheError, match="tensor 'a'.*smoothing"):
        Calibration.load(p)
    p = tmp_path / "s.cache"
    nan = struct.pack(">f", float("nan")).hex()
    p.write_text(f"TRT-8601-MinMaxCalibration\na: 3dcccccd\nkiln-smooth:a: 3f800000,{nan}\n")
    with pytest.raises(CalibrationCacheError, match="tensor 'a'.*smoothing"):
        Calibration.load(p)


MALFORMED = {  # file text: words the error says
    "deep json": ('{"format": "kiln-calibration", "scales": ' + "[" * 200000 + "]" * 200000 + "}", "nested too deeply"),
    "deep smoothing": ('{"format": "kiln-calibration", "scales": {}, "smoothing": {"a": ' + "[" * 200000 + "]" * 200000
                       + "}}", "nested too deeply"),
    "huge integer": ('{"format": "kiln-calibration", "scales": {"a": ' + "1" * 5000 + "}}", "not valid JSON"),
    "past float": ('{"format": "kiln-calibration", "scales": {"a": ' + "1" * 400 + ".0}}", "tensor 'a'.*not finite"),
    "string scale": ('{"format": "kiln-calibration", "scales": {"a": "0.1"}}', "tensor 'a'.*not a number"),
    "bool scale": ('{"format": "kiln-calibration", "scales": {"a": true}}', "tensor 'a'.*not a number"),
    "scales a list": ('{"format": "kiln-calibration", "scales": [0.1]}', "must be objects"),
    "not json": ("{oops", "not valid JSON"),
    "foreign json": ('{"format": "other"}', "not a Kiln calibration cache"),
    "json list": ("[1, 2]", "neither Kiln JSON nor TensorRT"),
    "trt short hex": ("TRT-8601-EntropyCalibration2\na: 3c01\n", "tensor 'a'.*8 hex digits"),
    "trt not hex": ("TRT-8601-EntropyCalibration2\na: zzzzzzzz\n", "tensor 'a'.*not hex"),
    "trt no colon": ("TRT-8601-EntropyCalibration2\n3c010a14\n", "line 2 is not"),
    "trt no name": ("TRT-8601-EntropyCalibration2\na: 3c010a14\n : 3c010a14\n", "line 3 is not"),
    "neither": ("hello", "neither Kiln JSON nor TensorRT"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_cache_is_a_kiln_error(tmp_path, case):
    text, words = MALFORMED[case]
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(CalibrationCacheError, match=words):
        Calibration.load(p)


def test_binary_and_oversized_files(tmp_path, monkeypatch):
    p = tmp_path / "bad.cache"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CalibrationCacheError, match="not text"):
        Calibration.load(p)
    monkeypatch.setattr(cal_cache, "MAX_FILE_BYTES", 1000)
    p.write_text("TRT-8601-EntropyCalibration2\n" + "".join(f"t{i}: 3c010a14\n" for i in range(100)))
    with pytest.raises(CalibrationCacheError, match="over"):
        Calibration.load(p)


def test_deep_cache_refuses_the_build(calibrated, tmp_path):
    p = tmp_path / "deep.json"
    p.write_text(MALFORMED["deep json"][0])
    with pytest.raises(kiln.BuildError, match="nested too deeply") as e:
        kiln.build(calibrated[0], int8=True, calibration_cache=str(p))
    assert isinstance(e.value.__cause__, CalibrationCacheError)
