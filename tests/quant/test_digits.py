"""INT8 on a trained model: the digits CNN (trained in the test setup on scikit-learn's bundled data)
keeps its top-1 accuracy within 0.5 points of float32 with every calibrator; cache builds, per-layer
precisions, the accuracy target and the TensorRT-style calibrator API."""
import numpy as np
import pytest

import kiln
import kiln.trt as trt
from digits import accuracy

QUANT_OPS = {"kiln::QConv", "kiln::QLinear"}


def quantized_layers(engine):
    return [l for l in engine.report.layers if l.op in QUANT_OPS]


def test_fp32_model_is_trained(digits):
    assert digits[4] > 95


@pytest.mark.parametrize("method", ["minmax", "entropy", "entropy2", "percentile"])
def test_int8_accuracy_within_half_a_point(digits, method):
    path, cal, xte, yte, acc32 = digits
    e = kiln.build(path, int8=True, int8_calibrator=cal, calibration_method=method)
    # held to the default target (cosine 0.99 to float32): a layer kept in float is named in the report
    acc_info = e.report.quantization["accuracy"]
    assert acc_info["checked"] and acc_info["met"], acc_info
    kept = [k["layer"] for k in acc_info["kept"]]
    layers = quantized_layers(e)
    assert len(layers) + len(kept) == 5 and all(l.precision == "int8" for l in layers)
    assert len([l for l in e.report.layers if l.op in ("kiln::Conv", "kiln::Linear")]) == len(kept)
    acc8 = accuracy(e, xte, yte)
    print(f"digits {method}: fp32 {acc32:.2f}%, int8 {acc8:.2f}%")
    assert acc8 >= acc32 - 0.5, (method, acc32, acc8)
    assert e.report.quantization["calibration"] == method


def test_int8_without_accuracy_check_quantizes_every_layer(digits):
    path, cal, xte, yte, acc32 = digits
    e = kiln.build(path, int8=True, int8_calibrator=cal, calibration_method="entropy", accuracy_target=None)
    layers = quantized_layers(e)
    assert len(layers) == 5 and all(l.precision == "int8" for l in layers)
    assert "accuracy" not in e.report.quantization


@pytest.mark.parametrize("suffix", [".json", ".cache"])
def test_build_from_cache_is_the_same_engine(digits, tmp_path, suffix):
    path, cal, xte, _, _ = digits
    cache = tmp_path / f"calib{suffix}"
    a = kiln.build(path, int8=True, int8_calibrator=cal, calibration_cache=str(cache))
    assert cache.is_file()
    b = kiln.build(path, int8=True, calibration_cache=str(cache))  # no data: scales from the cache
    assert any("calibration cache" in n for n in b.report.notes)
    assert [(l.op, l.kernel, l.precision) for l in a.report.layers] == \
           [(l.op, l.kernel, l.precision) for l in b.report.layers]
    wa = {v.name: v.const for v in a.graph.constants.values()}
    wb = {v.name: v.const for v in b.graph.constants.values()}
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert [n.attrs for n in a.graph.nodes] == [n.attrs for n in b.graph.nodes]
    x = {"x": xte[:32]}
    np.testing.assert_array_equal(a.create_execution_context().infer(x)["logits"],
                                  b.create_execution_context().infer(x)["logits"])


def test_int8_without_data_says_what_is_missing(digits):
    with pytest.raises(kiln.BuildError, match="calibration data"):
        kiln.build(digits[0], int8=True)


def test_engine_round_trip_keeps_int8_layers(digits, tmp_path):
    path, cal, xte, _, _ = digits
    e = kiln.build(path, int8=True, int8_calibrator=cal, calibration_method="minmax")
    e.save(tmp_path / "e.kiln")
    back = kiln.Engine.load(tmp_path / "e.kiln")
    assert [l.precision for l in back.report.layers] == [l.precision for l in e.report.layers]
    assert back.report.quantization == e.report.quantization
    x = {"x": xte[:16]}
    np.testing.assert_array_equal(back.create_execution_context().infer(x)["logits"],
                                  e.create_execution_context().infer(x)["logits"])


def test_layer_precisions_by_op_type_and_name(digits):
    path, cal, xte, yte, acc32 = digits
    e = kiln.build(path, int8=True, int8_calibrator=cal, layer_precisions={"Conv": "fp32"})
    assert {l.op for l in quantized_layers(e)} == {"kiln::QLinear"}
    assert any(r["rule"] == "quantize_int8" and "fp32" in r["reason"] for r in e.report.rejections)
    last = [l for l in kiln.build(path).report.layers if l.op == "kiln::Linear"][-1]
    e = kiln.build(path, int8=True, int8_calibrator=cal, layer_precisions={last.covers[0]: "fp32"})
    assert [l.op for l in e.report.layers if last.covers[0] in l.covers] == ["kiln::Linear"]
    assert len(quantized_layers(e)) == 4
    # Only the layers asked for, without the int8 flag.
    e = kiln.build(path, int8_calibrator=cal, layer_precisions={"Gemm": "int8"})
    assert {l.op for l in quantized_layers(e)} == {"kiln::QLinear"} and len(quantized_layers(e)) == 2
    assert accuracy(e, xte, yte) >= acc32 - 0.5


def test_accuracy_target_keeps_sensitive_layers_and_records_the_error(digits):
    path, cal, xte, yte, _ = digits
    target = {"min_cosine": 0.99999}  # stricter than int8 can be: layers go back to float until it holds
    e = kiln.build(path, int8=True, int8_calibrator=cal, calibration_method="minmax", accuracy_target=target)
    acc = e.report.quantization["accuracy"]
    assert acc["checked"] and acc["all_quantized"]["cosine"] < 0.99999
    assert acc["kept"], acc
    for k in acc["kept"]:
        assert {"layer", "local", "after_keeping"} <= set(k)
    assert acc["met"] == (acc["measured"]["cosine"] >= 0.99999)
    kept = {k["layer"] for k in acc["kept"]}
    assert len(quantized_layers(e)) == 5 - len(kept)
    assert any(n.startswith("accuracy:") for n in e.report.notes)
    # A loose target is met at once: nothing kept.
    e = kiln.build(path, int8=True, int8_calibrator=cal, accuracy_target={"min_cosine": 0.9})
    assert e.report.quantization["accuracy"]["kept"] == [] and len(quantized_layers(e)) == 5


class DigitsCalibrator(trt.IInt8EntropyCalibrator2):
    """TensorRT-style: host addresses of contiguous batches, and a calibration cache through bytes."""

    def __init__(self, batches):
        super().__init__()
        self.batches = [np.ascontiguousarray(b["x"]) for b in batches]
        self.i = 0
        self.cache = None

    def get_batch_size(self):
        return 64

    def get_batch(self, names):
        if self.i >= len(self.batches):
            return None
        self.current = self.batches[self.i]
        self.i += 1
        return [int(self.current.ctypes.data)]

    def read_calibration_cache(self):
        return self.cache

    def write_calibration_cache(self, cache):
        self.cache = bytes(cache)


def test_tensorrt_calibrator_api(digits):
    path, cal, xte, yte, acc32 = digits
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path))
    config = builder.create_builder_config()
    config.device = "cpu"
    config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 1, 8, 8), (64, 1, 8, 8), (256, 1, 8, 8))
    config.add_optimization_profile(profile)
    calibrator = DigitsCalibrator([b for b in cal if len(b["x"]) == 64])
    config.int8_calibrator = calibrator
    data = builder.build_serialized_network(network, config)
    assert data is not None
    assert calibrator.cache.startswith(b"TRT-") and b"EntropyCalibration2" in calibrator.cache
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    assert sum(l.op in QUANT_OPS for l in engine.engine.report.layers) == 5
    assert accuracy(engine.engine, xte, yte) >= acc32 - 0.5
    # Second build: the calibrator's cache is used, get_batch is not called again.
    calibrator.i = len(calibrator.batches)
    assert builder.build_serialized_network(network, config) is not None


def test_fp8_and_dynamic_int8(digits):
    path, cal, xte, yte, acc32 = digits
    e = kiln.build(path, fp8=True, int8_calibrator=cal)  # E4M3, emulated on the CPU (torch._scaled_mm on GPU)
    assert [l.precision for l in quantized_layers(e)] == ["fp8"] * 5
    # the GEMM feeding the next GEMM writes fp8 from its epilogue (no float tensor between them)
    chained = [n for n in e.graph.nodes if n.op_type == "QLinear" and n.attrs.get("out_dtype") == "fp8e4m3"]
    assert chained and all(u.attrs.get("input_quantized") for n in chained for u, _ in n.outputs[0].uses)
    assert accuracy(e, xte, yte) >= acc32 - 0.5
    e = kiln.build(path, int8=True, int8_activations="dynamic", int8_calibrator=cal)
    assert len(quantized_layers(e)) == 5  # convolutions calibrated, GEMMs with per-row scales at run time
    assert all("x_dynamic" in n.attrs for n in e.graph.nodes if n.op_type == "QLinear")
    assert accuracy(e, xte, yte) >= acc32 - 0.5


def test_smoothquant_build_and_cache(digits, tmp_path):
    path, cal, xte, yte, acc32 = digits
    cache = tmp_path / "calib.cache"
    a = kiln.build(path, int8=True, int8_calibrator=cal, int8_smoothing=0.5, calibration_cache=str(cache))
    smoothed = [n for n in a.graph.nodes if n.op_type == "QLinear" and "smooth_input" in n.attrs]
    assert len(smoothed) == 2
    assert "kiln-smooth:" in cache.read_text()
    assert accuracy(a, xte, yte) >= acc32 - 0.5
    b = kiln.build(path, int8=True, int8_smoothing=0.5, calibration_cache=str(cache))
    x = {"x": xte[:32]}
    np.testing.assert_array_equal(a.create_execution_context().infer(x)["logits"],
                                  b.create_execution_context().infer(x)["logits"])
