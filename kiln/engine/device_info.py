"""What an engine records about where it was built, and the check made when it is loaded."""
from __future__ import annotations

import platform

import torch

from ..errors import DeviceMismatchError, EngineFormatError


def describe(device: str) -> dict:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceMismatchError(f"cannot build for {device!r}: CUDA is not available on this machine")
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        return {"type": "cuda", "name": props.name, "capability": list(torch.cuda.get_device_capability(idx)),
                "memory_bytes": props.total_memory, "cuda": torch.version.cuda}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "machine": platform.machine()}


def versions() -> dict:
    from .. import __version__
    return {"kiln": __version__, "torch": torch.__version__.split("+")[0]}


def check_compatible(built_on: dict, built_with: dict, where: str) -> None:
    """Raise DeviceMismatchError if this machine cannot run an engine built on ``built_on``."""
    if not isinstance(built_on, dict) or "type" not in built_on:
        raise EngineFormatError(f"{where}: device record is malformed")
    if built_on["type"] == "cuda":
        if not torch.cuda.is_available():
            raise DeviceMismatchError(f"{where} was built for GPU {built_on.get('name')!r} (compute capability "
                                      f"{built_on.get('capability')}), but CUDA is not available here. "
                                      f"Rebuild it with device='cpu' to run on this machine.")
        here = torch.cuda.get_device_properties(torch.cuda.current_device())
        cap = list(torch.cuda.get_device_capability())
        if cap != list(built_on.get("capability", [])) or here.name != built_on.get("name"):
            raise DeviceMismatchError(f"{where} was built for {built_on.get('name')!r} (compute capability "
                                      f"{built_on.get('capability')}), this GPU is {here.name!r} ({cap}); rebuild it here")
    elif built_on["type"] != "cpu":
        raise DeviceMismatchError(f"{where} was built for an unknown device type {built_on['type']!r}")
