"""kiln.trt against TensorRT's own API: enum values from TensorRT 10's headers, flags Kiln cannot honour are
errors, build messages reach the user's ILogger, TensorRT's refusal of a dynamic network without a profile,
the TensorRT 8 binding API, and the seed article's sample (seed 003) with only its imports changed."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import kiln.trt as trt
from kiln.errors import InputError
from trt_support import RecordingLogger

# From NVIDIA/TensorRT v10.16 include/NvInfer.h, NvInferRuntime.h and NvInferRuntimeBase.h (k prefix dropped,
# as TensorRT's Python bindings do).
TENSORRT_10 = {
    "BuilderFlag": dict(FP16=0, INT8=1, DEBUG=2, GPU_FALLBACK=3, REFIT=4, DISABLE_TIMING_CACHE=5, TF32=6,
                        SPARSE_WEIGHTS=7, SAFETY_SCOPE=8, OBEY_PRECISION_CONSTRAINTS=9,
                        PREFER_PRECISION_CONSTRAINTS=10, DIRECT_IO=11, REJECT_EMPTY_ALGORITHMS=12,
                        VERSION_COMPATIBLE=13, EXCLUDE_LEAN_RUNTIME=14, FP8=15, ERROR_ON_TIMING_CACHE_MISS=16,
                        BF16=17, DISABLE_COMPILATION_CACHE=18, STRIP_PLAN=19, WEIGHTLESS=19, REFIT_IDENTICAL=20,
                        WEIGHT_STREAMING=21, INT4=22, REFIT_INDIVIDUAL=23, STRICT_NANS=24, MONITOR_MEMORY=25,
                        FP4=26, EDITABLE_TIMING_CACHE=27, DISTRIBUTIVE_INDEPENDENCE=28),
    "DataType": dict(FLOAT=0, HALF=1, INT8=2, INT32=3, BOOL=4, UINT8=5, FP8=6, BF16=7, INT64=8, INT4=9, FP4=10,
                     E8M0=11),
    "MemoryPoolType": dict(WORKSPACE=0, DLA_MANAGED_SRAM=1, DLA_LOCAL_DRAM=2, DLA_GLOBAL_DRAM=3, TACTIC_DRAM=4,
                           TACTIC_SHARED_MEMORY=5),
    "NetworkDefinitionCreationFlag": dict(EXPLICIT_BATCH=0, STRONGLY_TYPED=1, PREFER_JIT_PYTHON_PLUGINS=2,
                                          PREFER_AOT_PYTHON_PLUGINS=3),
    "TensorIOMode": dict(NONE=0, INPUT=1, OUTPUT=2),
}
SEVERITY = dict(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)


@pytest.mark.parametrize("enum_name", sorted(TENSORRT_10))
def test_enum_values_match_tensorrt_headers(enum_name):
    enum = getattr(trt, enum_name)
    assert {name: int(getattr(enum, name)) for name in TENSORRT_10[enum_name]} == TENSORRT_10[enum_name]
    assert set(enum.__members__) == set(TENSORRT_10[enum_name])


def test_logger_severity_values():
    assert {n: int(getattr(trt.Logger.Severity, n)) for n in SEVERITY} == SEVERITY
    assert {n: int(getattr(trt.Logger, n)) for n in SEVERITY} == SEVERITY


def static_model(batch=2):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def build(model, logger, flags=(), profile=None, network_flags=0):
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags)
    assert trt.OnnxParser(network, logger).parse(model.SerializeToString())
    config = builder.create_builder_config()
    config.device = "cpu"
    for f in flags:
        config.set_flag(f)
    if profile is not None:
        p = builder.create_optimization_profile()
        p.set_shape("x", *profile)
        config.add_optimization_profile(p)
    return builder.build_serialized_network(network, config), config


def test_unsupported_flag_is_an_error_not_ignored():
    log = RecordingLogger()
    data, config = build(static_model(), log, flags=[trt.BuilderFlag.SPARSE_WEIGHTS])
    assert data is None
    errors = [m for s, m in log.messages if s == trt.ILogger.ERROR]
    assert any("SPARSE_WEIGHTS is not supported" in m for m in errors), log.messages
    config.clear_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    assert not config.get_flag(trt.BuilderFlag.SPARSE_WEIGHTS)


def test_flags_bit_mask_like_tensorrt():
    config = trt.Builder(trt.Logger()).create_builder_config()
    config.flags = (1 << int(trt.BuilderFlag.FP16)) | (1 << int(trt.BuilderFlag.STRICT_NANS))
    assert config.get_flag(trt.BuilderFlag.FP16) and config.get_flag(trt.BuilderFlag.STRICT_NANS)
    assert not config.get_flag(trt.BuilderFlag.TF32)
    assert config.flags == (1 << 0) | (1 << 24)


def test_build_messages_reach_the_users_logger():
    log = RecordingLogger(trt.ILogger.INFO)
    data, _ = build(static_model(), log)
    assert data is not None
    assert any(s == trt.ILogger.INFO for s, _ in log.messages), log.messages


def test_dynamic_network_without_profile_is_refused_as_tensorrt_does():
    model = static_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    log = RecordingLogger()
    data, _ = build(model, log)
    assert data is None
    assert any("no optimization profile has been defined" in m for s, m in log.messages if s == trt.ILogger.ERROR)
    data, _ = build(model, log, profile=((1, 3), (2, 3), (4, 3)))
    engine = trt.Runtime(log).deserialize_cuda_engine(data)
    assert [tuple(d) for d in engine.get_tensor_profile_shape("x", 0)] == [(1, 3), (2, 3), (4, 3)]
    with pytest.raises(InputError, match="profile index 3 out of range"):
        engine.get_tensor_profile_shape("x", 3)
    with pytest.raises(InputError, match="is an output"):
        engine.get_tensor_profile_shape("y", 0)
    with pytest.raises(InputError, match="no I/O tensor named 'nope'"):
        engine.get_tensor_profile_shape("nope", 0)


def test_tensorrt8_binding_api():
    data, _ = build(static_model(), trt.Logger())
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(data)
    assert list(engine) == ["x", "y"] and engine.num_bindings == 2
    assert engine[0] == "x" and engine["y"] == 1 and engine.get_binding_index("nope") == -1
    assert engine.binding_is_input("x") and not engine.binding_is_input(1)
    assert tuple(engine.get_binding_shape(0)) == (2, 3) and engine.get_binding_dtype("y") == trt.DataType.FLOAT
    ctx = engine.create_execution_context()
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    y = np.empty((2, 4), np.float32)
    assert ctx.execute_async_v2(bindings=[x.ctypes.data, y.ctypes.data], stream_handle=0)
    w = numpy_helper.to_array(static_model().graph.initializer[0])
    np.testing.assert_allclose(y, np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="binding index 5 out of range"):
        engine.get_binding_shape(5)


def test_seed_003_sample_runs_with_only_its_imports_changed(tmp_path):
    """The article's build_engine and TensorRTInference as printed, with `import tensorrt as trt` ->
    `import kiln.trt as trt` and `import pycuda.driver as cuda; import pycuda.autoinit` ->
    `import kiln.trt.pycuda as cuda`."""
    import kiln.trt.pycuda as cuda

    def build_engine(onnx_file_path, engine_file_path):
        logger = trt.Logger(trt.Logger.INFO)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
        parser = trt.OnnxParser(network, logger)
        with open(onnx_file_path, 'rb') as model:
            parser.parse(model.read())
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
        if builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        serialized_engine = builder.build_serialized_network(network, config)
        with open(engine_file_path, 'wb') as f:
            f.write(serialized_engine)
        print("Engine build complete!")

    class TensorRTInference:
        def __init__(self, engine_path):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            with open(engine_path, 'rb') as f:
                self.engine = runtime.deserialize_cuda_engine(f.read())
            self.context = self.engine.create_execution_context()
            self.inputs, self.outputs, self.bindings, self.stream = self.allocate_buffers()

        def allocate_buffers(self):
            inputs, outputs, bindings = [], [], []
            stream = cuda.Stream()
            for binding in self.engine:
                size = trt.volume(self.engine.get_binding_shape(binding))
                dtype = trt.nptype(self.engine.get_binding_dtype(binding))
                host_mem = cuda.pagelocked_empty(size, dtype)
                device_mem = cuda.mem_alloc(host_mem.nbytes)
                bindings.append(int(device_mem))
                if self.engine.binding_is_input(binding):
                    inputs.append({'host': host_mem, 'device': device_mem})
                else:
                    outputs.append({'host': host_mem, 'device': device_mem})
            return inputs, outputs, bindings, stream

        def infer(self, input_data):
            np.copyto(self.inputs[0]['host'], input_data.ravel())
            cuda.memcpy_htod_async(self.inputs[0]['device'], self.inputs[0]['host'], self.stream)
            self.context.execute_async_v2(bindings=self.bindings, stream_handle=self.stream.handle)
            cuda.memcpy_dtoh_async(self.outputs[0]['host'], self.outputs[0]['device'], self.stream)
            self.stream.synchronize()
            return self.outputs[0]['host']

    onnx.save(static_model(), tmp_path / "model.onnx")
    build_engine(str(tmp_path / "model.onnx"), str(tmp_path / "model.plan"))
    x = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    y = TensorRTInference(str(tmp_path / "model.plan")).infer(x)
    w = numpy_helper.to_array(static_model().graph.initializer[0])
    tol = 2e-2 if torch.cuda.is_available() else 1e-5  # fp16 where the platform has it
    np.testing.assert_allclose(y.reshape(2, 4), np.maximum(x @ w, 0), rtol=tol, atol=tol)
