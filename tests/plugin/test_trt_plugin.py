"""kiln.trt.plugin: TensorRT's Python plugin decorators. A TensorRT QDP sample (register + impl with a Triton
kernel, autotune with custom tactics), with only the import changed, builds through kiln.trt's ONNX parser from
a node written in TensorRT's convention, and runs."""
from typing import Tuple

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from onnx import TensorProto, helper

import kiln.trt as trt
import kiln.trt.plugin as trtp
from kiln import errors
from kiln.errors import PluginError


@triton.jit
def add_kernel(x_ptr, n_elements, y_ptr, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(0)
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(y_ptr + offsets, x + 1, mask=mask)


# -- as TensorRT's plugin guide writes it (import changed) ---------------------------------------------------
@trtp.register("sample::elemwise_add_plugin")
def add_plugin_desc(inp0: trtp.TensorDesc, block_size: int) -> trtp.TensorDesc:
    return inp0.like()


@trtp.impl("sample::elemwise_add_plugin")
def add_plugin_impl(inp0: trtp.Tensor, block_size: int, outputs: Tuple[trtp.Tensor], stream: int) -> None:
    n = inp0.numel()
    inp0_t = torch.as_tensor(inp0)
    out_t = torch.as_tensor(outputs[0])
    add_kernel[(triton.cdiv(n, block_size),)](inp0_t, n, out_t, BLOCK_SIZE=block_size)


# -- a plugin with custom tactics through autotune ------------------------------------------------------------
@trtp.register("sample::scale_plugin")
def scale_desc(inp0: trtp.TensorDesc, factor: float) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
    return inp0.like(), trtp.from_shape_expr((inp0.shape_expr[0],), inp0.dtype)


@trtp.autotune("sample::scale_plugin")
def scale_autotune(inp0: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]):
    return [trtp.AutoTuneCombination("FP32, FP32, FP32", "LINEAR", [1, 2])]


@trtp.impl("sample::scale_plugin")
def scale_impl(inp0: trtp.Tensor, factor: float, outputs, stream: int, tactic: int) -> None:
    out = torch.as_tensor(outputs[0])
    out.copy_(inp0 * factor if tactic != 2 else inp0 * (factor * 0.5) * 2.0)
    torch.as_tensor(outputs[1]).copy_(out.sum(dim=tuple(range(1, out.dim()))))


def _build(model):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString()), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    data = builder.build_serialized_network(network, config)
    assert data is not None
    return trt.Runtime(logger).deserialize_cuda_engine(data)


def _run(engine, feeds: dict, out_shapes: dict):
    ctx = engine.create_execution_context()
    outs = {k: torch.empty(s) for k, s in out_shapes.items()}
    for name, t in {**feeds, **outs}.items():
        ctx.set_tensor_address(name, t.data_ptr())
    assert ctx.execute_async_v3(0)
    return outs


def _model(node, outputs):
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 50])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_tensorrt_onnx_plugin_convention_builds_and_runs():
    node = helper.make_node("elemwise_add_plugin", ["x"], ["y"], plugin_namespace="sample", plugin_version="1",
                            block_size=64)
    engine = _build(_model(node, [("y", [3, 50])]))
    x = torch.randn(3, 50)
    y = _run(engine, {"x": x}, {"y": (3, 50)})["y"]
    torch.testing.assert_close(y, x + 1)


def test_plugin_domain_and_custom_tactics():
    node = helper.make_node("scale_plugin", ["x"], ["y", "s"], domain="sample", factor=3.0)
    m = _model(node, [("y", [3, 50]), ("s", [3])])
    m.opset_import.append(helper.make_opsetid("sample", 1))
    engine = _build(m)
    x = torch.randn(3, 50)
    out = _run(engine, {"x": x}, {"y": (3, 50), "s": (3,)})
    torch.testing.assert_close(out["y"], 3 * x)
    torch.testing.assert_close(out["s"], (3 * x).sum(1), rtol=1e-5, atol=1e-4)
    plugin = trtp.registered().get("sample", "scale_plugin")
    assert [t.name for t in plugin.tactics] == ["tactic1", "tactic2"]
    assert plugin.dtypes == (torch.float32,)


def test_impl_before_register_and_aot_only_are_refused():
    with pytest.raises(PluginError, match="register the plugin first"):
        trtp.impl("sample::never_registered")(lambda inp0, outputs, stream: None)

    @trtp.register("sample::aot_only")
    def aot_desc(inp0: trtp.TensorDesc) -> trtp.TensorDesc:
        return inp0.like()

    @trtp.aot_impl("sample::aot_only")
    def aot(inp0: trtp.TensorDesc, outputs, tactic: int):
        raise AssertionError("Kiln never calls an aot_impl")

    node = helper.make_node("aot_only", ["x"], ["y"], domain="sample")
    m = _model(node, [("y", [3, 50])])
    m.opset_import.append(helper.make_opsetid("sample", 1))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert not parser.parse(m.SerializeToString())  # no impl: the op is not registered with Kiln
    assert "aot_only" in parser.get_error(0).desc()


def test_engine_without_the_plugin_is_refused_by_the_runtime():
    import kiln
    node = helper.make_node("elemwise_add_plugin", ["x"], ["y"], domain="sample", block_size=64)
    m = _model(node, [("y", [3, 50])])
    m.opset_import.append(helper.make_opsetid("sample", 1))
    data = bytes(trt.Builder(trt.Logger()).build_serialized_network(_parsed(m), trt.Builder(trt.Logger())
                                                                     .create_builder_config()))
    with pytest.raises(PluginError, match="sample::elemwise_add_plugin version 1 is not registered"):
        kiln.Engine.deserialize(data)
    assert np.isfinite(_run(trt.Runtime(trt.Logger()).deserialize_cuda_engine(data), {"x": torch.ones(3, 50)},
                            {"y": (3, 50)})["y"].numpy()).all()


def _parsed(model):
    network = trt.Builder(trt.Logger()).create_network(0)
    assert trt.OnnxParser(network, trt.Logger()).parse(model.SerializeToString())
    return network


def test_network_api_add_plugin_as_the_qdp_sample_calls_it():
    """TensorRT's QDP sample builds with ``network.add_plugin(trtp.op.sample.elemwise_add_plugin(i_x,
    block_size=...))``: the same calls with kiln.trt, one plugin of two outputs after it."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    i_x = network.add_input(name="x", dtype=trt.DataType.FLOAT, shape=(3, 50))
    out = network.add_plugin(trtp.op.sample.elemwise_add_plugin(i_x, block_size=64))
    assert isinstance(out, trt.IPluginV3Layer) and out.num_outputs == 1
    scaled = network.add_plugin(trtp.op.sample.scale_plugin(out.get_output(0), factor=2.0), aot=False)
    assert scaled.num_outputs == 2 and tuple(scaled.get_output(1).shape) == (3,)
    scaled.get_output(0).name, scaled.get_output(1).name = "y", "s"
    network.mark_output(tensor=scaled.get_output(0))
    network.mark_output(tensor=scaled.get_output(1))
    engine = trt.Runtime(logger).deserialize_cuda_engine(
        builder.build_serialized_network(network, builder.create_builder_config()))
    x = torch.randn(3, 50)
    got = _run(engine, {"x": x}, {"y": (3, 50), "s": (3,)})
    torch.testing.assert_close(got["y"], (x + 1) * 2)
    torch.testing.assert_close(got["s"], ((x + 1) * 2).sum(1), rtol=1e-5, atol=1e-4)


def test_add_plugin_refuses_unknown_plugins_attributes_and_other_objects():
    network = trt.Builder(trt.Logger()).create_network(0)
    i_x = network.add_input(name="x", dtype=trt.DataType.FLOAT, shape=(3, 50))
    with pytest.raises(PluginError, match="register the plugin first"):
        trtp.op.sample.no_such_plugin(i_x)
    with pytest.raises(PluginError, match="no attribute"):
        trtp.op.sample.elemwise_add_plugin(i_x, blocksize=64)
    with pytest.raises(errors.InputError, match="plugin call"):
        network.add_plugin(i_x)
