"""The few ``pycuda.driver`` calls TensorRT samples make for their buffers, over torch, so such a sample runs on
kiln.trt with its imports changed::

    import kiln.trt.pycuda as cuda    # instead of: import pycuda.driver as cuda; import pycuda.autoinit

``mem_alloc`` gives device memory on a CUDA machine and host memory on a CPU-only one (where kiln.trt engines
run on the CPU and read host addresses), so the same sample runs on both. Covered: ``Stream``,
``pagelocked_empty``, ``mem_alloc``, ``memcpy_htod(_async)``, ``memcpy_dtoh(_async)``. Not pycuda itself:
no contexts, modules or kernels.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["Stream", "DeviceAllocation", "pagelocked_empty", "mem_alloc", "memcpy_htod", "memcpy_htod_async",
           "memcpy_dtoh", "memcpy_dtoh_async"]


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class Stream:
    """A CUDA stream (its ``handle`` is what ``execute_async_v2/v3`` take); on the CPU work is done on return."""

    def __init__(self):
        self._stream = torch.cuda.Stream() if torch.cuda.is_available() else None

    @property
    def handle(self) -> int:
        return self._stream.cuda_stream if self._stream is not None else 0

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()


class DeviceAllocation:
    """``nbytes`` of device memory (host memory without a GPU); ``int(alloc)`` is its address."""

    def __init__(self, nbytes: int):
        self.tensor = torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=_device())
        self.nbytes = int(nbytes)

    def __int__(self) -> int:
        return self.tensor.data_ptr()

    __index__ = __int__

    def free(self) -> None:
        self.tensor = torch.empty(0, dtype=torch.uint8)


def pagelocked_empty(shape, dtype) -> np.ndarray:
    """A host array in page-locked memory (pinned) when there is a GPU, ordinary memory otherwise."""
    dt = np.dtype(dtype)
    count = int(np.prod(shape)) if np.ndim(shape) else int(shape)
    if torch.cuda.is_available():
        raw = torch.empty(count * dt.itemsize, dtype=torch.uint8, pin_memory=True)
        return raw.numpy().view(dt).reshape(shape)
    return np.empty(shape, dtype=dt)


def mem_alloc(nbytes: int) -> DeviceAllocation:
    return DeviceAllocation(nbytes)


def _bytes_of(host: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(host).reshape(-1).view(np.uint8))


def _run_on(stream: Stream | None, fn) -> None:
    if stream is not None and stream._stream is not None:
        with torch.cuda.stream(stream._stream):
            fn()
    else:
        fn()


def memcpy_htod_async(dest: DeviceAllocation, src: np.ndarray, stream: Stream | None = None) -> None:
    data = _bytes_of(src)
    _run_on(stream, lambda: dest.tensor[:data.numel()].copy_(data, non_blocking=True))


def memcpy_dtoh_async(dest: np.ndarray, src: DeviceAllocation, stream: Stream | None = None) -> None:
    if not dest.flags["C_CONTIGUOUS"]:
        raise ValueError("memcpy_dtoh needs a contiguous host array")
    out = torch.from_numpy(dest.reshape(-1).view(np.uint8))
    _run_on(stream, lambda: out.copy_(src.tensor[:out.numel()], non_blocking=True))


def memcpy_htod(dest: DeviceAllocation, src: np.ndarray) -> None:
    memcpy_htod_async(dest, src)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def memcpy_dtoh(dest: np.ndarray, src: DeviceAllocation) -> None:
    memcpy_dtoh_async(dest, src)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
