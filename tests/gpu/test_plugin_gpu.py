"""Plugins on the GPU: the SoftClip plugin's Triton kernel is timed and checked by the tuner on CUDA (fp32 and
fp16), and the TensorRT-style plugin (kiln.trt.plugin) runs its Triton impl on device pointers."""
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

sys.path.insert(0, str(Path(__file__).parents[1] / "plugin"))

import kiln  # noqa: E402


@pytest.mark.parametrize("fp16", [False, True])
def test_softclip_triton_tactic_on_cuda(fp16):
    import softclip_plugin
    from test_plugin import expected, softclip_model
    engine = kiln.build(softclip_model(shape=(64, 4096)), plugins=softclip_plugin.plugins, device="cuda", fp16=fp16,
                        accuracy_target=None, optimization_level=3)
    layer = next(l for l in engine.report.layers if l.name == "softclip")
    assert isinstance(layer.candidates.get("plugin/tactic=block256"), float), layer.candidates  # timed, checked
    x = torch.randn(64, 4096, device="cuda") * 4
    x[0, 0] = float("nan")
    y = engine.create_execution_context().infer({"x": x})["y"]
    assert torch.isnan(y[0, 0])
    tol = 1e-2 if fp16 else 1e-5
    torch.testing.assert_close(y[1:], expected(x)[1:], rtol=tol, atol=tol)


def test_trt_plugin_sample_on_cuda():
    import test_trt_plugin as t
    from onnx import helper
    node = helper.make_node("elemwise_add_plugin", ["x"], ["y"], plugin_namespace="sample", block_size=64)
    logger = t.trt.Logger(t.trt.Logger.WARNING)
    builder = t.trt.Builder(logger)
    network = builder.create_network(0)
    assert t.trt.OnnxParser(network, logger).parse(t._model(node, [("y", [3, 50])]).SerializeToString())
    config = builder.create_builder_config()
    config.device = "cuda"
    engine = t.trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    x, y = torch.randn(3, 50, device="cuda"), torch.empty(3, 50, device="cuda")
    ctx = engine.create_execution_context()
    ctx.set_tensor_address("x", x.data_ptr())
    ctx.set_tensor_address("y", y.data_ptr())
    ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    torch.testing.assert_close(y, x + 1)
