"""A raw address given for a GPU engine's tensor is checked with the CUDA driver before it is viewed as device
memory (kiln/engine/device_address.py). The driver is a stand-in here, so the rules run on every machine; the GPU
tests (tests/gpu) exercise the real driver."""
import ctypes

import pytest

from kiln.engine.device_address import check_device_address
from kiln.errors import InputError


class FakeDriver:
    """Answers cuPointerGetAttribute from a table of allocations: (start, size, memory type)."""

    def __init__(self, allocations, broken=()):
        self.allocations = allocations
        self.broken = set(broken)  # attributes the driver fails to answer

    def cuPointerGetAttribute(self, out, attribute, ptr):  # noqa: N802 - the driver's name
        attribute, ptr = attribute.value, ptr.value
        if attribute in self.broken:
            return 999
        for start, size, kind in self.allocations:
            if start <= ptr < start + size:
                value = {2: kind, 11: start, 12: size}[attribute]
                ctypes.cast(out, ctypes.POINTER(type(out._obj))).contents.value = value
                return 0
        return 1  # CUDA_ERROR_INVALID_VALUE: not CUDA memory


def test_host_address_is_refused_with_the_tensor_named():
    driver = FakeDriver([(0x10000, 4096, 2)])
    with pytest.raises(InputError, match=r"input 'x'.*not GPU memory.*data_ptr"):
        check_device_address(0x7F0000, 64, "input 'x'", driver)


def test_buffer_running_past_its_allocation_is_refused():
    driver = FakeDriver([(0x10000, 4096, 2)])
    check_device_address(0x10000, 4096, "output 'y'", driver)  # exactly fits
    check_device_address(0x10800, 2048, "output 'y'", driver)
    with pytest.raises(InputError, match=r"output 'y'.*needs 4096 bytes.*ends 2048 bytes"):
        check_device_address(0x10800, 4096, "output 'y'", driver)


@pytest.mark.parametrize("kind", [1, 4])  # pinned host memory and unified memory are usable on the device
def test_pinned_and_unified_memory_are_accepted(kind):
    check_device_address(0x10000, 64, "input 'x'", FakeDriver([(0x10000, 64, kind)]))


def test_a_driver_that_does_not_answer_refuses_nothing():
    check_device_address(0x10000, 1 << 20, "input 'x'", FakeDriver([(0x10000, 64, 2)], broken={11, 12}))
    check_device_address(0x10000, 64, "input 'x'", FakeDriver([], broken={2}))


def test_buffer_crossing_back_to_back_mappings_is_accepted():
    """torch's expandable_segments map a segment as several handles back to back; the driver reports the range of
    the one handle an address lies in, and a valid tensor may cross into the next."""
    driver = FakeDriver([(0x10000, 4096, 2), (0x11000, 4096, 2)])
    check_device_address(0x10800, 4096, "input 'x'", driver)
    with pytest.raises(InputError, match=r"ends 6144 bytes"):
        check_device_address(0x10800, 8192, "input 'x'", driver)
