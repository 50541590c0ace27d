"""TensorRT's debug tensors and IDebugListener.

Mark tensors at build with ``network.mark_debug(tensor)``; the engine keeps them observable
(``engine.is_debug_tensor(name)``). At run time, ``context.set_debug_listener(listener)`` and
``context.set_tensor_debug_state(name, True)`` (or ``set_all_tensors_debug_state(True)``): each execute then calls
``listener.process_debug_tensor(addr, location, type, shape, name, stream)`` for every debug tensor whose state is
on (every state is off at first, as in TensorRT).

Kiln: a debug tensor is an extra output of the build, after the network's own (``kiln.build``'s
``debug_tensors``), so no pass fuses it away and no later layer overwrites it; marking one can cost the fusions it
took part in, as in TensorRT. The engine file lists them (header field 'debug_tensors', checked at load). A run
with no listener, or with every state off, is the run of an engine without a callback.

What differs from TensorRT: the listener is called once the whole execute has finished (Kiln's execute is
synchronous), in the order the layers computing the tensors ran, not as each one is computed on the stream;
the data at ``addr`` is complete when it is called, and valid only during the call, as in TensorRT. ``addr`` is
an int (a device pointer on a GPU engine, a host pointer for a value on the host), not a capsule; a non-contiguous
value is handed over as a contiguous copy. The return value of ``process_debug_tensor`` is ignored.
"""
from __future__ import annotations

import enum

import torch

from ..ir.dtype import DType
from .types import DataType, Dims, _TO_TRT


class TensorLocation(enum.IntEnum):
    """Where a tensor's data is: DEVICE (GPU memory) or HOST (CPU memory); values as in TensorRT 10."""

    DEVICE = 0
    HOST = 1


class IDebugListener:
    """Subclass and implement ``process_debug_tensor``; set it with ``context.set_debug_listener``."""

    def process_debug_tensor(self, addr: int, location: TensorLocation, type: DataType, shape: Dims,  # noqa: A002
                             name: str, stream: int) -> bool:  # pragma: no cover - interface
        """Receive debug tensor ``name`` after an execute: its data at address ``addr`` (in ``location``), of element
        type ``type`` and dims ``shape``, contiguous; ``stream`` is the CUDA stream handle of the execute (0 on the
        CPU). The data is valid only during the call: copy what you keep."""
        raise NotImplementedError


def notify(listener: IDebugListener, values: list, enabled: set, dtypes: dict, stream: int = 0) -> None:
    """Call ``listener`` for each (name, tensor) of ``values`` (in execution order) whose name is ``enabled``;
    ``dtypes``: each debug tensor's Kiln element type in the engine (None: taken from the tensor)."""
    for name, value in values:
        if name not in enabled or not isinstance(value, torch.Tensor):
            continue
        t = value if value.is_contiguous() else value.contiguous()
        location = TensorLocation.DEVICE if t.device.type == "cuda" else TensorLocation.HOST
        kind = dtypes.get(name)
        if kind is None:
            try:
                kind = DType.from_torch(t.dtype)
            except TypeError:
                kind = None
        dtype = _TO_TRT.get(kind, DataType.FLOAT)
        listener.process_debug_tensor(int(t.data_ptr()), location, dtype, Dims(int(d) for d in t.shape), name,
                                      int(stream))
