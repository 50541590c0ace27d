"""kiln.trt's builder and runtime interfaces, in TensorRT's call sequences: IProgressMonitor, ITimingCache,
IProfiler, EngineInspector."""
import json

import numpy as np
import pytest

import kiln.trt as trt
from kiln import errors
from trt_support import RecordingLogger, engine_buffer, engine_empty, host




def _network(builder):
    """conv -> relu -> softmax over a [1, 3, 8, 8] input; the conv is a layer the tuner times."""
    rng = np.random.default_rng(0)
    net = builder.create_network(0)
    x = net.add_input("x", trt.float32, (1, 3, 8, 8))
    conv = net.add_convolution_nd(x, 4, (3, 3), rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                                  rng.standard_normal(4).astype(np.float32))
    conv.name = "conv"
    relu = net.add_activation(conv.get_output(0), trt.ActivationType.RELU)
    relu.name = "relu"
    sm = net.add_softmax(relu.get_output(0))
    sm.get_output(0).name = "y"
    net.mark_output(sm.get_output(0))
    return net


class Monitor(trt.IProgressMonitor):
    def __init__(self, cancel_in=None):
        super().__init__()
        self.events, self.cancel_in = [], cancel_in

    def phase_start(self, phase_name, parent_phase, num_steps):
        self.events.append(("start", phase_name, parent_phase, num_steps))

    def step_complete(self, phase_name, step):
        self.events.append(("step", phase_name, step))
        return phase_name != self.cancel_in

    def phase_finish(self, phase_name):
        self.events.append(("finish", phase_name))


def test_progress_monitor_sees_every_phase_and_can_cancel():
    logger = RecordingLogger()
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.progress_monitor = monitor = Monitor()
    assert builder.build_serialized_network(_network(builder), config) is not None
    started = [e[1] for e in monitor.events if e[0] == "start"]
    finished = [e[1] for e in monitor.events if e[0] == "finish"]
    assert started == finished and {"parse", "passes", "memory"} <= set(started)
    passes = [e for e in monitor.events if e[:2] == ("step", "passes")]
    assert [e[2] for e in passes] == list(range(len(passes))) and passes  # steps numbered from 0, in order

    config.progress_monitor = Monitor(cancel_in="passes")
    assert builder.build_serialized_network(_network(builder), config) is None
    assert "build cancelled by the progress monitor" in logger.errors[-1]
    assert ("finish", "passes") in config.progress_monitor.events  # phases opened are closed, cancelled or not


def test_timing_cache_round_trip_and_combine():
    logger = RecordingLogger()
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    cache = config.create_timing_cache(b"")
    assert cache is not None and len(cache) == 0
    assert config.set_timing_cache(cache, ignore_mismatch=False)
    assert builder.build_serialized_network(_network(builder), config) is not None
    assert len(cache) > 0, "the build adds its timings to the cache it was given"
    data = cache.serialize()
    again = config.create_timing_cache(data)
    assert again.entries == cache.entries
    other = trt.ITimingCache()
    assert other.combine(again, False) and other.entries == cache.entries
    assert config.get_timing_cache() is cache
    # a second build with the cache times nothing again
    fresh = builder.create_builder_config()
    fresh.set_timing_cache(fresh.create_timing_cache(data), True)
    seen = []
    logger_at_info = trt.Logger(trt.Logger.INFO)
    logger_at_info.log = lambda sev, msg: seen.append(msg)
    assert trt.Builder(logger_at_info).build_serialized_network(_network(builder), fresh) is not None
    assert any("0 candidates timed" in m for m in seen), seen
    # bytes that are not a Kiln timing cache: None, with the reason logged
    assert config.create_timing_cache(b"\x00TRT cache") is None and "not a Kiln timing cache" in logger.errors[-1]
    assert cache.reset() and len(cache) == 0


class Profiler(trt.IProfiler):
    def __init__(self):
        super().__init__()
        self.times = []

    def report_layer_time(self, layer_name, ms):
        self.times.append((layer_name, ms))


def test_profiler_and_engine_inspector():
    logger = RecordingLogger()
    builder = trt.Builder(logger)
    engine = trt.Runtime(logger).deserialize_cuda_engine(
        builder.build_serialized_network(_network(builder), builder.create_builder_config()))
    context = engine.create_execution_context()
    context.profiler = profiler = Profiler()
    x, x_address = engine_buffer(engine, np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32))
    (y, y_address), (y_plain, y_plain_address) = [engine_empty(engine, (1, 4, 6, 6), np.float32) for _ in range(2)]
    context.set_tensor_address("x", x_address)
    context.set_tensor_address("y", y_address)
    assert context.execute_async_v3(0)
    names = [n for n, _ in profiler.times]
    assert len(names) == engine.num_layers and all(ms >= 0 for _, ms in profiler.times)
    context.execute_async_v3(0)
    assert len(profiler.times) == 2 * engine.num_layers  # reported after each execute
    context.profiler = None
    context.set_tensor_address("y", y_plain_address)
    context.execute_async_v3(0)
    np.testing.assert_array_equal(host(y), host(y_plain))  # the profiled run computes what the plain one does

    inspector = engine.create_engine_inspector()
    layers = [json.loads(inspector.get_layer_information(i, trt.LayerInformationFormat.JSON))
              for i in range(engine.num_layers)]
    assert [d["Name"] for d in layers] == names  # the profiler's names are the inspector's
    assert any("conv" in d["Origin"] for d in layers) and all(d["Precision"] for d in layers)
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    assert info["Layers"] == layers and info["Bindings"] == ["x", "y"]
    assert len(inspector.get_engine_information(trt.LayerInformationFormat.ONELINE).splitlines()) == engine.num_layers
    with pytest.raises(errors.InputError, match="out of range"):
        inspector.get_layer_information(engine.num_layers, trt.LayerInformationFormat.JSON)


def test_interface_enum_values_are_tensorrts():
    assert {m.name: int(m) for m in trt.LayerInformationFormat} == {"ONELINE": 0, "JSON": 1}


class Allocator(trt.IOutputAllocator):
    """Grows a buffer where the engine runs when an output needs more room, as TensorRT's samples' allocators do."""

    def __init__(self, engine):
        super().__init__()
        self.engine = engine
        (self.buffer, self.address), self.shape, self.calls = engine_empty(engine, (8,), np.uint8), None, []

    def reallocate_output(self, tensor_name, memory, size, alignment):
        self.calls.append((tensor_name, memory, size, alignment))
        if size > self.buffer.nbytes:
            self.buffer, self.address = engine_empty(self.engine, (size,), np.uint8)
        return self.address

    def notify_shape(self, tensor_name, shape):
        self.shape = tuple(shape)


def test_output_allocator_for_a_data_dependent_output():
    logger = RecordingLogger()
    builder = trt.Builder(logger)
    net = builder.create_network(0)
    nz = net.add_non_zero(net.add_input("x", trt.float32, (3, 4)))
    assert tuple(nz.get_output(0).shape) == (2, -1) and nz.get_output(0).dtype == trt.int64
    nz.get_output(0).name = "idx"
    net.mark_output(nz.get_output(0))
    engine = trt.Runtime(logger).deserialize_cuda_engine(
        builder.build_serialized_network(net, builder.create_builder_config()))
    context = engine.create_execution_context()
    assert tuple(context.get_tensor_shape("idx")) == (2, -1)
    x = np.array([[0, 1, 0, 2], [3, 0, 0, 0], [0, 0, 5, 0]], np.float32)
    x_buffer, x_address = engine_buffer(engine, x)
    context.set_tensor_address("x", x_address)
    with pytest.raises(errors.InputError, match="set_output_allocator"):
        context.execute_async_v3(0)
    context.set_tensor_address("idx", 0)
    with pytest.raises(errors.ShapeError, match="data-dependent shape: give it an IOutputAllocator"):
        context.execute_async_v3(0)
    allocator = Allocator(engine)
    assert context.set_output_allocator("idx", allocator) and context.get_output_allocator("idx") is allocator
    assert context.execute_async_v3(0)
    assert allocator.shape == (2, 4) and allocator.calls[0][2:] == (64, 256)
    got = host(allocator.buffer)[:64].view(np.int64).reshape(allocator.shape)
    np.testing.assert_array_equal(got, np.array(np.nonzero(x)))
    assert context.get_tensor_address("idx") == allocator.address
