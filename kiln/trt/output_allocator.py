"""TensorRT's IOutputAllocator: memory for outputs whose shape is known only once the engine has run
(NonZero, Unique, ...), or any output the caller prefers to allocate late.

``context.set_output_allocator(name, allocator)``. After the run, Kiln calls
``reallocate_output(name, memory, size, alignment)`` (``reallocate_output_async(..., stream)`` when the
allocator defines it) with the address set so far (0 if none) and the bytes needed; the allocator returns the
address to write to (the same one when it is big enough; 0 or None when it cannot allocate, which fails the
execute). Then the output is copied there and ``notify_shape(name, shape)`` is called.
"""
from __future__ import annotations

import torch

from .. import errors
from ..engine.buffers import wrap_address
from ..ir.dtype import DType
from .types import Dims

ALIGNMENT = 256  # bytes, as TensorRT asks of output memory


class IOutputAllocator:
    """Subclass and implement reallocate_output (or reallocate_output_async) and notify_shape."""

    def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
        """Return the address of at least ``size`` bytes (aligned to ``alignment``) for output ``tensor_name``;
        ``memory`` is the address set so far (0: none), to reuse when big enough. 0 or None fails the run. Implement
        this or ``reallocate_output_async``."""
        raise NotImplementedError("an IOutputAllocator must implement reallocate_output or reallocate_output_async")

    def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int, stream: int) -> int:
        """``reallocate_output`` with the CUDA stream handle of the run; by default it calls ``reallocate_output``."""
        return self.reallocate_output(tensor_name, memory, size, alignment)

    def notify_shape(self, tensor_name: str, shape) -> None:
        """Told the shape of output ``tensor_name`` once it has been written; the default does nothing."""
        pass


def deliver(allocator: IOutputAllocator, name: str, value: torch.Tensor, memory: int, dtype, device,
            stream: int = 0) -> int:
    """Ask ``allocator`` for memory for ``value``, copy it there, notify the shape; return the address used."""
    size = value.numel() * value.element_size()
    address = allocator.reallocate_output_async(name, int(memory or 0), size, ALIGNMENT, int(stream))
    if not address and size:
        raise errors.InputError(f"the output allocator of {name!r} returned no memory for {size} bytes")
    if size:
        dtype = dtype if dtype is not None else DType.from_torch(value.dtype)
        wrap_address(int(address), tuple(value.shape), dtype, device).copy_(value)
    allocator.notify_shape(name, Dims(int(d) for d in value.shape))
    return int(address or 0)
