"""kiln.trt: the usual TensorRT build-and-run code with only the import changed."""
import numpy as np
import torch

import kiln.trt as trt


def test_tensorrt_workflow(small_model):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(small_model.SerializeToString()), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.device = "cpu"  # host pointers below; tests/gpu covers device pointers
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4, 8, 8), (2, 4, 8, 8), (4, 4, 8, 8))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    assert serialized is not None and serialized.nbytes > 0
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(serialized))
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert names == ["x", "y", "z"]
    assert engine.get_tensor_mode("x") == trt.TensorIOMode.INPUT
    assert engine.get_tensor_mode("y") == trt.TensorIOMode.OUTPUT
    assert tuple(engine.get_tensor_shape("x")) == (-1, 4, 8, 8)
    assert engine.get_tensor_dtype("y") == trt.float32
    context = engine.create_execution_context()
    x = np.random.default_rng(0).standard_normal((3, 4, 8, 8)).astype(np.float32)
    context.set_input_shape("x", x.shape)
    outs = {n: np.empty(tuple(context.get_tensor_shape(n)), dtype=trt.nptype(engine.get_tensor_dtype(n)))
            for n in names[1:]}
    context.set_tensor_address("x", x.ctypes.data)
    for n, a in outs.items():
        context.set_tensor_address(n, a.ctypes.data)
    assert context.execute_async_v3(0)
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(
        np.frombuffer(small_model.graph.initializer[0].raw_data, np.float32).reshape(8, 4, 3, 3)),
        torch.from_numpy(np.frombuffer(small_model.graph.initializer[1].raw_data, np.float32)), padding=1))
    np.testing.assert_allclose(outs["y"], ref.numpy(), rtol=1e-5, atol=1e-5)
    assert context.execute_v2([x.ctypes.data, outs["y"].ctypes.data, outs["z"].ctypes.data])
    assert trt.volume((2, 3, 4)) == 24 and trt.nptype(trt.float16) == np.float16


def test_parser_errors_and_bad_engine():
    logger = trt.Logger(trt.Logger.INTERNAL_ERROR)
    parser = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)
    assert not parser.parse(b"not a model")
    assert parser.num_errors == 1 and "not a valid ONNX model" in parser.get_error(0).desc()
    assert trt.Runtime(logger).deserialize_cuda_engine(b"garbage") is None
