"""kiln/passes/quantize_norms.py: a LayerNorm whose output feeds quantized layers writes their 8-bit input
itself (kiln::LayerNormQuantize), and the engine computes exactly what it computed without the rewrite."""
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.ops import KernelContext
from kiln.ops.norm import layer_norm
from kiln.ops.quantized import layer_norm_quantize, quantize
from kiln.passes import pipeline

rng = np.random.default_rng(0)


def block():
    """LN -> fc1 -> Relu -> fc2 -> + LN output (a BERT FFN): fc1 reads the LN output, the residual add too."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5, name="ln"),
             helper.make_node("MatMul", ["y", "W1"], ["m1"], name="fc1"), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "W2"], ["m2"], name="fc2"), helper.make_node("Add", ["m2", "b2"], ["a2"]),
             helper.make_node("Add", ["a2", "y"], ["out"], name="residual")]
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("g", 1 + 0.1 * f(32)), ("b", 0.1 * f(32)), ("W1", f(32, 64) / 6), ("b1", 0.1 * f(64)),
        ("W2", f(64, 32) / 8), ("b2", 0.1 * f(32))]]
    g = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 7, 32])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 7, 32])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def data(n=4):
    return [{"x": (rng.standard_normal((2, 7, 32)) * 3 + 1).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_layernorm_writes_the_quantized_input(precision):
    model, calib, x = block(), data(), data(1)[0]
    kw = {precision: True, "int8_calibrator": calib, "calibration_method": "minmax"}
    fused = kiln.build(model, **kw)
    q_dtype = "fp8e4m3" if precision == "fp8" else "int8"
    assert fused.report.fusions.get(f"quantize_norm_outputs:{q_dtype}") == 1  # fc1 (fc2 reads the Relu)
    ops = {layer.op for layer in fused.report.layers}
    assert "kiln::LayerNormQuantize" in ops and "LayerNormalization" not in ops
    got = fused.create_execution_context().infer(x)["out"]
    reloaded = kiln.Engine.deserialize(fused.serialize())  # the new op is plain data in the engine file
    np.testing.assert_array_equal(reloaded.create_execution_context().infer(x)["out"], got)

    steps = tuple(p for p in pipeline.DEFAULT_PIPELINE if getattr(p, "name", "") != "quantize_norm_outputs")
    plain = kiln.build(model, **kw, pipeline=steps)
    assert not any(k.startswith("quantize_norm_outputs") for k in plain.report.fusions)
    assert "LayerNormalization" in {layer.op for layer in plain.report.layers}
    want = plain.create_execution_context().infer(x)["out"]
    np.testing.assert_array_equal(got, want)  # the same arithmetic, only in another kernel


@pytest.mark.parametrize("q_dtype", ["int8", "fp8e4m3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_op_is_layernorm_then_quantize_of_y_as_stored(q_dtype, dtype):
    x = (torch.randn(3, 5, 48) * 2).to(dtype)
    g, b = (1 + 0.1 * torch.randn(48)).to(dtype), (0.1 * torch.randn(48)).to(dtype)
    attrs = {"axis": -1, "epsilon": 1e-5, "q_scale": 0.03, "q_zero_point": 0, "q_dtype": q_dtype}
    y, yq = layer_norm_quantize(KernelContext(opset=17, device=torch.device("cpu"), num_outputs=2), [x, g, b], attrs)
    assert torch.equal(y, layer_norm([x, g, b], attrs))
    assert y.dtype == dtype and torch.equal(yq.float(), quantize(y, 0.03, 0, q_dtype).float())
