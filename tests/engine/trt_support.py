"""Helpers of the kiln.trt tests (a module of its own name: ``from conftest import`` picks whichever conftest
was imported first)."""
import kiln.trt as trt


class RecordingLogger(trt.ILogger):
    """An ILogger that keeps every message at or above ``min_severity``; ``errors`` are those at ERROR or worse."""

    def __init__(self, min_severity=trt.ILogger.VERBOSE):
        self.min_severity = min_severity
        self.messages: list[tuple] = []

    def log(self, severity, msg):
        self.messages.append((severity, msg))

    @property
    def errors(self) -> list[str]:
        return [m for s, m in self.messages if s <= trt.ILogger.ERROR]


def engine_buffer(engine, array):
    """(buffer, address) holding ``array`` where ``engine`` runs: the array itself for a CPU engine, a torch
    tensor on the engine's GPU otherwise (as TensorRT's samples copy inputs to device memory). ``host(buffer)``
    reads it back."""
    import numpy as np
    import torch
    device = engine.engine.device
    if device.type == "cpu":
        array = np.ascontiguousarray(array)
        return array, array.ctypes.data
    t = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    return t, t.data_ptr()


def engine_empty(engine, shape, dtype):
    """(buffer, address) of an uninitialized buffer of ``shape`` and numpy ``dtype`` where ``engine`` runs."""
    import numpy as np
    return engine_buffer(engine, np.empty(tuple(shape), dtype))


def host(buffer):
    """A buffer made by ``engine_buffer``/``engine_empty`` as a numpy array (a copy for a GPU one)."""
    import torch
    return buffer.cpu().numpy() if isinstance(buffer, torch.Tensor) else buffer
