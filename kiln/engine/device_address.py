"""Checks on a raw address given for a GPU engine's tensor (kiln.trt's ``set_tensor_address``, calibrators that
return addresses), before Kiln views it as device memory.

A host address (a numpy array's ``ctypes.data``) handed to a GPU engine, or a device buffer smaller than the
tensor, would make the first kernel fault and leave the process's CUDA context unusable: every later CUDA call
fails, in this test or this server request and in all others. TensorRT trusts the caller here; Kiln asks the
CUDA driver instead (``cuPointerGetAttribute``: the memory type of the address, and the allocation it lies in)
and refuses with an InputError. The driver is asked through ctypes because torch does not expose the query;
where the driver library cannot be loaded, or it does not answer a query, that check is skipped (nothing is
refused on a guess).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

from ..errors import InputError

# cuda.h: CUpointer_attribute and CUmemorytype values, CUresult codes.
_ATTR_MEMORY_TYPE = 2
_ATTR_RANGE_START = 11
_ATTR_RANGE_SIZE = 12
_MEMORY_TYPES = {1: "pinned host", 2: "device", 3: "array", 4: "unified"}
_SUCCESS = 0
_INVALID_VALUE = 1  # the address is not allocated, mapped or registered with any CUDA context


@functools.cache
def _driver() -> Any:
    """The CUDA driver library, or None where it cannot be loaded."""
    for name in ("libcuda.so.1", ctypes.util.find_library("cuda")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _query(driver: Any, attribute: int, ptr: int, out: Any) -> int:
    return int(driver.cuPointerGetAttribute(ctypes.byref(out), ctypes.c_int(attribute), ctypes.c_uint64(ptr)))


def check_device_address(ptr: int, nbytes: int, what: str, driver: Any = None) -> None:
    """InputError when ``ptr`` is not memory the GPU can use, or when the ``nbytes`` from ``ptr`` run past the
    end of the allocation it lies in. ``what`` names the tensor in the message. ``driver``: the CUDA driver
    library (tests pass a stand-in); None loads the system's."""
    driver = driver if driver is not None else _driver()
    if driver is None or nbytes <= 0:
        return
    kind = ctypes.c_uint(0)
    rc = _query(driver, _ATTR_MEMORY_TYPE, ptr, kind)
    if rc == _INVALID_VALUE:
        raise InputError(f"{what}: address {ptr:#x} is not GPU memory (a host array's address?); a GPU engine "
                         f"needs device memory, e.g. the data_ptr() of a torch tensor on the engine's device")
    if rc != _SUCCESS or kind.value not in _MEMORY_TYPES:
        return
    start, size = ctypes.c_uint64(0), ctypes.c_size_t(0)
    if _query(driver, _ATTR_RANGE_START, ptr, start) != _SUCCESS or \
            _query(driver, _ATTR_RANGE_SIZE, ptr, size) != _SUCCESS or size.value == 0:
        return
    end = start.value + size.value
    while end < ptr + nbytes:  # a range the driver reports is one mapped handle: a virtual-memory allocation
        # (torch's expandable_segments) maps several back to back, and a tensor may cross from one into the next
        nxt_start, nxt_size = ctypes.c_uint64(0), ctypes.c_size_t(0)
        if _query(driver, _ATTR_RANGE_START, end, nxt_start) != _SUCCESS or nxt_start.value != end or \
                _query(driver, _ATTR_RANGE_SIZE, end, nxt_size) != _SUCCESS or nxt_size.value == 0:
            break
        end += nxt_size.value
    room = end - ptr
    if nbytes > room:
        raise InputError(f"{what}: needs {nbytes} bytes from address {ptr:#x}, but its "
                         f"{_MEMORY_TYPES[kind.value]} allocation ends {room} bytes after it; give a larger buffer")
