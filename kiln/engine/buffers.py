"""Caller-provided output buffers (``ctx.infer(inputs, outputs={name: buffer})``), checked before a run.

A buffer must be what the output is: the same element type (a float16 or int32 buffer would silently cast or
truncate the results), writable, native byte order, and for torch on the engine's device. The shape is
checked once the output's shape is known. Every refusal is an InputError naming the output.
"""
from __future__ import annotations

import ctypes
import functools
import math
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import InputError
from ..ir.dtype import DType
from .device_address import check_device_address


@functools.cache  # per element type, not per inference
def _numpy_dtype(dtype: DType) -> np.dtype | None:
    from ..ir.convert import torch_to_numpy
    try:
        return torch_to_numpy(torch.empty(0, dtype=dtype.torch), dtype).dtype
    except Exception:  # noqa: BLE001 - a type numpy cannot hold: no numpy buffer can take it
        return None


def check_output_buffers(buffers: Mapping[str, Any] | None, outputs: list, device: torch.device) -> None:
    """Raise InputError for a buffer that cannot take its output; ``outputs`` are the engine's TensorInfos."""
    if buffers is None:
        return
    if not isinstance(buffers, Mapping):
        raise InputError(f"outputs must be a dict of output name -> buffer, got {type(buffers).__name__}")
    by_name = {o.name: o for o in outputs}
    for name, buf in buffers.items():
        info = by_name.get(name)
        if info is None:
            raise InputError(f"output buffer for unknown output {name!r}; outputs are {sorted(by_name)}")
        if isinstance(buf, np.ndarray):
            _check_numpy(name, buf, info.dtype)
        elif isinstance(buf, torch.Tensor):
            _check_torch(name, buf, info.dtype, device)
        else:
            raise InputError(f"output buffer for {name!r} must be a numpy array or torch tensor, "
                             f"got {type(buf).__name__}")


def _check_numpy(name: str, buf: np.ndarray, dtype: DType | None) -> None:
    if not buf.flags.writeable:
        raise InputError(f"output buffer for {name!r} is read-only")
    if not buf.dtype.isnative:
        raise InputError(f"output buffer for {name!r} has non-native byte order ({buf.dtype.str}); "
                         f"pass a {buf.dtype.newbyteorder('=').name} array and convert after the run")
    want = None if dtype is None else _numpy_dtype(dtype)
    if want is not None and buf.dtype != want:
        raise InputError(f"output buffer for {name!r} has dtype {buf.dtype.name}, the output is {want.name} "
                         f"(Kiln does not cast into a caller's buffer)")


def _check_torch(name: str, buf: torch.Tensor, dtype: DType | None, device: torch.device) -> None:
    if dtype is not None and buf.dtype != dtype.torch:
        raise InputError(f"output buffer for {name!r} has dtype {str(buf.dtype).replace('torch.', '')}, "
                         f"the output is {dtype.name.lower()} (Kiln does not cast into a caller's buffer)")
    if buf.device.type != device.type or (device.index is not None and buf.device.index not in (None, device.index)):
        raise InputError(f"output buffer for {name!r} is on {buf.device}, the engine runs on {device}")
    if buf.requires_grad:
        raise InputError(f"output buffer for {name!r} requires grad; pass a tensor with requires_grad=False")


def check_output_shape(name: str, buf: Any, shape: tuple) -> None:
    if tuple(buf.shape) != tuple(shape):
        raise InputError(f"output buffer for {name!r} has shape {list(buf.shape)}, the output has shape "
                         f"{list(shape)}")


def wrap_address(ptr: int, shape: tuple, dtype: DType, device: torch.device, what: str = "buffer") -> torch.Tensor:
    """A tensor viewing ``ptr``'s memory (no copy): the raw addresses of kiln.trt's ``set_tensor_address`` and of
    calibrators that return addresses. On a GPU the address is checked first (kiln/engine/device_address.py):
    a host address or a too small allocation is an InputError naming ``what``, not a fault on the device."""
    tdt = dtype.torch
    nbytes = math.prod(shape) * tdt.itemsize
    if device.type == "cuda":
        check_device_address(int(ptr), nbytes, what)
        typestr = np.dtype(torch.empty(0, dtype=tdt).numpy().dtype).str if tdt != torch.bfloat16 else "<V2"
        holder = type("_CudaBuffer", (), {})()
        holder.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr, "data": (int(ptr), False),
                                           "version": 3, "strides": None}
        return torch.as_tensor(holder, device=device)
    buf = (ctypes.c_char * max(nbytes, 1)).from_address(int(ptr))
    return torch.frombuffer(buf, dtype=tdt, count=math.prod(shape)).reshape(shape)
