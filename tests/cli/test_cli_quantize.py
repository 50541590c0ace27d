"""`kiln quantize` and trtexec's precision flags, run as a user runs them."""
import numpy as np
import onnx

from cli_support import kiln


def test_quantize_writes_qdq_model_that_builds(work):
    d, _ = work
    calib = d / "calib"
    calib.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        np.savez(calib / f"b{i}.npz", x=rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    kiln("quantize", "tiny.onnx", "-o", "tiny.qdq.onnx", "--calib-data", "calib", "--calib-method", "minmax",
         "--cache", "calib.json", cwd=d, check=0)
    ops = {n.op_type for n in onnx.load(str(d / "tiny.qdq.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # A second run from the cache alone needs no data.
    kiln("quantize", "tiny.onnx", "-o", "again.onnx", "--cache", "calib.json", cwd=d, check=0)
    p = kiln("exec", "--onnx=tiny.qdq.onnx", "--shapes=x:2x3x8x8", "--skipInference", "--device=cpu", cwd=d, check=0)
    assert "PASSED" in p.stdout


def test_quantize_without_data_or_cache_is_an_error(work):
    d, _ = work
    p = kiln("quantize", "tiny.onnx", "-o", "x.onnx", cwd=d)
    assert p.returncode == 2 and "calib-data" in p.stderr


def test_layer_precisions_flag(work):
    d, _ = work
    p = kiln("exec", "--onnx=tiny.onnx", "--shapes=x:2x3x8x8", "--skipInference", "--device=cpu", "--fp16",
             "--layerPrecisions=conv:fp32", "--dumpLayerInfo", cwd=d, check=0)
    assert "PASSED" in p.stdout
    bad = kiln("exec", "--onnx=tiny.onnx", "--layerPrecisions=conv", "--skipInference", "--device=cpu", cwd=d)
    assert bad.returncode == 1 and "layerName:precision" in bad.stderr
