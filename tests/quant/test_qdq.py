"""Explicit quantization: Q/DQ models (onnxruntime's quantize_static, and Kiln's own write_qdq_model)
build into real INT8 layers and match onnxruntime within quantization tolerance, and onnx's reference
evaluator (the exact Q/DQ semantics) within float rounding."""
import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.quant import Calibration, calibrate_model, write_qdq_model
from kiln.quant.cli import main as quantize_main

ort = pytest.importorskip("onnxruntime")
QUANT_OPS = {"kiln::QConv", "kiln::QLinear"}


def ort_run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def reference(path, x):
    m = onnx.load(str(path))
    for o in m.opset_import:  # onnx.reference implements (De)QuantizeLinear from opset 19
        if o.domain in ("", "ai.onnx") and o.version < 19:
            o.version = 19
    return ReferenceEvaluator(m).run(None, {"x": x})[0]


def agree(a, b):
    return float((a.argmax(1) == b.argmax(1)).mean())


@pytest.fixture(scope="module", params=["uint8-per-tensor", "int8-per-channel"])
def ort_qdq(request, digits, tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    path, cal, *_ = digits

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(cal)

        def get_next(self):
            return next(self.it, None)

    out = tmp_path_factory.mktemp("qdq") / "digits.qdq.onnx"
    per_channel = request.param == "int8-per-channel"
    # reduce_range: 7-bit weights, which onnxruntime's x86 kernels without VNNI multiply exactly (see w8 in
    # tests/ops/test_contrib_ms_quant.py: with full-range weights its results on an AVX2-only CPU were 30 steps off)
    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    reduce_range=True,
                    activation_type=QuantType.QInt8 if per_channel else QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out


def test_onnxruntime_qdq_model_builds_to_int8_layers(digits, ort_qdq):
    _, _, xte, yte, acc32 = digits
    e = kiln.build(ort_qdq)
    q = [l for l in e.report.layers if l.op in QUANT_OPS]
    assert len(q) == 5 and all(l.precision == "int8" for l in q)
    assert not any(l.op in ("QuantizeLinear", "DequantizeLinear") for l in e.report.layers)
    assert e.report.quantization["calibration"].startswith("explicit")
    got = e.create_execution_context().infer({"x": xte})["logits"]
    want = ort_run(ort_qdq, xte)
    # The model quantizes its output too: the integer kernels' exact sums may round a value to the
    # neighbouring step where float sums land on the other side of a rounding boundary.
    step = [n for n in e.graph.nodes if n.op_type == "FakeQuant"][-1].attrs["scale"]
    assert float(np.abs(got - want).max()) <= 1.001 * step
    assert float(np.abs(got - want).mean()) < 0.25 * step
    assert agree(got, want) >= 0.99
    np.testing.assert_allclose(got[:64], reference(ort_qdq, xte[:64]), atol=1.001 * step, rtol=0)
    assert float((got.argmax(1) == yte).mean() * 100) >= acc32 - 0.5


def test_write_qdq_model_round_trip(digits, tmp_path):
    path, cal, xte, yte, acc32 = digits
    c = calibrate_model(path, cal, "percentile")
    out = tmp_path / "digits.kiln-qdq.onnx"
    model, skipped = write_qdq_model(path, c, out)
    assert skipped == [] and out.is_file()
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 5 and ops.count("DequantizeLinear") == 10
    want = ort_run(out, xte)
    assert float((want.argmax(1) == yte).mean() * 100) >= acc32 - 0.5
    e = kiln.build(out)
    assert sum(l.op in QUANT_OPS for l in e.report.layers) == 5
    got = e.create_execution_context().infer({"x": xte})["logits"]
    span = float(np.abs(want).max())
    ref = reference(out, xte)
    assert float(np.abs(got - ref).mean()) < 1e-3 * span
    assert float(np.abs(got - ref).max()) < 0.03 * span  # an intermediate value rounded one step away
    assert agree(got, want) >= 0.99


def test_quantize_cli(digits, tmp_path):
    path, cal, *_ = digits
    data = tmp_path / "data"
    data.mkdir()
    for i, b in enumerate(cal[:4]):
        np.savez(data / f"{i}.npz", x=b["x"])
    cache = tmp_path / "calib.json"
    assert quantize_main([str(path), "-o", str(tmp_path / "q.onnx"), "--calib-data", str(data),
                          "--cache", str(cache)]) == 0
    assert Calibration.load(cache).scales
    assert quantize_main([str(path), "-o", str(tmp_path / "q2.onnx"), "--cache", str(cache)]) == 0
    a, b = onnx.load(str(tmp_path / "q.onnx")), onnx.load(str(tmp_path / "q2.onnx"))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert quantize_main([str(path), "-o", str(tmp_path / "q3.onnx")]) == 2
