"""BuilderConfig(int4_weights=True): MatMul/Gemm weights become 4-bit blocks (com.microsoft::MatMulNBits); the
engine computes exactly x @ dequantize(W), which onnxruntime agrees with on the rewritten layer, and stays near
the float32 model."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.passes.quantize_int4 import quantize_blocks


def mlp(k=96, hidden=64, n=10, seed=0):
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((k, hidden)).astype(np.float32) * 0.1, "w1"),
             numpy_helper.from_array(rng.standard_normal((n, hidden)).astype(np.float32) * 0.1, "w2"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def dequantize(packed, scales, n, k, block):
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2).to(torch.float32)
    return ((codes - 8) * scales.reshape(n, -1, 1)).reshape(n, -1)[:, :k]


def test_blocks_round_trip_within_half_a_step():
    w = torch.randn(8, 70)  # K not a multiple of the block: padded
    packed, scales = quantize_blocks(w, 32)
    assert packed.dtype == torch.uint8 and packed.shape == (8, 3, 16) and scales.shape == (24,)
    back = dequantize(packed, scales, 8, 70, 32)
    step = scales.reshape(8, 3, 1).expand(8, 3, 32).reshape(8, 96)[:, :70]
    assert bool(((back - w).abs() <= step / 2 + 1e-6).all())


def test_int4_engine_is_the_dequantized_model_and_near_fp32(tmp_path):
    m = mlp()
    engine = kiln.build(m, int4_weights=True)
    assert engine.report.fusions.get("quantize_weights_int4") == 2
    assert any("int4 weights: 2" in n and "met" in n and "NOT met" not in n for n in engine.report.notes), \
        engine.report.notes
    x = np.random.default_rng(1).standard_normal((2, 96)).astype(np.float32)
    got = engine.create_execution_context().infer({"x": x})["y"]
    w1, w2, b2 = (torch.from_numpy(numpy_helper.to_array(i).copy()) for i in m.graph.initializer)
    p1, s1 = quantize_blocks(w1.t(), 32)
    p2, s2 = quantize_blocks(w2, 32)
    xt = torch.from_numpy(x)
    want = torch.relu(xt @ dequantize(p1, s1, 64, 96, 32).t()) @ dequantize(p2, s2, 10, 64, 32).t() + b2
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    engine.save(tmp_path / "int4.engine")  # MatMulNBits is plain data in the file
    again = kiln.Engine.load(tmp_path / "int4.engine").create_execution_context().infer({"x": x})["y"]
    np.testing.assert_array_equal(again, got)
    fp32 = (torch.relu(xt @ w1) @ w2.t() + b2).numpy()
    cos = float(np.dot(got.ravel(), fp32.ravel()) / np.linalg.norm(got) / np.linalg.norm(fp32))
    assert cos > 0.99, cos


def test_onnxruntime_agrees_on_the_rewritten_layer():
    ort = pytest.importorskip("onnxruntime")
    w = torch.randn(48, 64) * 0.1  # [K, N]
    packed, scales = quantize_blocks(w.t(), 16)
    node = helper.make_node("MatMulNBits", ["x", "b", "s"], ["y"], domain="com.microsoft", K=48, N=64, bits=4,
                            block_size=16)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 48])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 64])],
                          [numpy_helper.from_array(packed.numpy(), "b"), numpy_helper.from_array(scales.numpy(), "s")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    x = np.random.default_rng(2).standard_normal((3, 48)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(x @ dequantize(packed, scales, 64, 48, 16).t().numpy(), want, rtol=1e-5, atol=1e-5)


def test_block_size_is_checked():
    with pytest.raises(ValueError, match="power of two"):
        kiln.BuilderConfig(int4_weights=True, int4_block_size=24)


def test_a_layer_int4_cannot_represent_keeps_its_float_weight():
    m = mlp()
    w1 = np.sign(numpy_helper.to_array(m.graph.initializer[0])) * 0.05
    w1[::32, :] = 1.0  # one large value per block of 32 along K: the 31 small ones round to 0 (~27% of the output)
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1.astype(np.float32), "w1"))
    engine = kiln.build(m, int4_weights=True, accuracy_target=None)  # the per-layer guard alone
    assert engine.report.fusions.get("quantize_weights_int4") == 1
    assert any(r["rule"] == "quantize_weights_int4" and "keeps its float weight" in r["reason"]
               for r in engine.report.rejections), engine.report.rejections


def test_the_model_is_held_to_the_accuracy_target():
    """Layers go back to float, largest own error first, until the whole model meets the target."""
    strict = kiln.build(mlp(), int4_weights=True, accuracy_target={"min_cosine": 0.999999})
    assert not strict.report.fusions.get("quantize_weights_int4")
    kept = [r for r in strict.report.rejections if r["rule"] == "quantize_weights_int4"]
    assert len(kept) == 2 and all("missed accuracy_target" in r["reason"] for r in kept), kept
    assert any("kept in float: 2 layers" in n for n in strict.report.notes), strict.report.notes
    loose = kiln.build(mlp(), int4_weights=True, accuracy_target={"min_cosine": 0.9})
    assert loose.report.fusions.get("quantize_weights_int4") == 2
