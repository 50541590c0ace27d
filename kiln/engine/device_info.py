"""What an engine records about where it was built, and the checks made when it is loaded.

The device record says what the engine was built and tuned for: a GPU by name and compute capability; a
CPU by machine architecture (``platform.machine()``) and the instruction-set level torch dispatches to
(``torch.backends.cpu.get_cpu_capability()``). The versions record names the Kiln and torch that wrote it.
Loading refuses a different architecture, a lower instruction-set level, a newer Kiln (major/minor) and
another torch major. Fields that engines written before a check existed lack are not checked.
"""
from __future__ import annotations

import platform
import re

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
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "machine": platform.machine(),
            "cpu_capability": cpu_capability()}


def cpu_capability() -> str:
    """The CPU instruction-set level torch's kernels dispatch to here ("AVX512", "AVX2", "DEFAULT", ...)."""
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return get() if get is not None else "DEFAULT"


def native_bf16(device: str) -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 natively, and what says so. CPUs: the AVX512-BF16 or AMX-BF16
    flag (without it oneDNN emulates bf16 and it is slower than float32); GPUs: compute capability 8.0+."""
    if device.startswith("cuda"):
        idx = torch.device(device).index or 0
        cap = tuple(torch.cuda.get_device_capability(idx)) if torch.cuda.is_available() else (0, 0)
        return cap >= (8, 0), f"compute capability {cap[0]}.{cap[1]}"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False, "the CPU's flags cannot be read here (no /proc/cpuinfo)"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return bool(found), (f"CPU flags {', '.join(found)}" if found else "no avx512_bf16 or amx_bf16 CPU flag")


# Instruction-set levels by what they add, per architecture family (the machine check keeps families apart).
# A level not listed here (from a newer torch) is compared for equality only.
_CAPABILITY_RANK = {"DEFAULT": 0, "NO AVX": 0, "AVX2": 1, "AVX512": 2, "VSX": 1, "Z VECTOR": 1, "ZVECTOR": 1,
                    "SVE": 1, "SVE128": 1, "SVE256": 2}


def versions() -> dict:
    from ..version import __version__
    return {"kiln": __version__, "torch": torch.__version__.split("+")[0]}


def _release(text, field: str, where: str) -> tuple[int, int]:
    """(major, minor) of a version string such as "2.13.0", "2.4.0a0" or "0.1.0.dev3"."""
    m = re.match(r"(\d{1,6})\.(\d{1,6})", text) if isinstance(text, str) else None
    if m is None:
        raise EngineFormatError(f"{where}: header field {field} is not a version string: {text!r}")
    return int(m.group(1)), int(m.group(2))


def check_versions(built_with: dict, where: str) -> None:
    """Refuse an engine written by a newer Kiln (major or minor: in 0.x a minor may change what a file means)
    or with another torch major (stored dtypes and tactics are torch's). Older Kiln engines of the same file
    format keep loading; a newer Kiln patch release writes the same engines."""
    from ..version import __version__
    if not isinstance(built_with, dict):
        raise EngineFormatError(f"{where}: header field versions must be an object, got {type(built_with).__name__}")
    if "kiln" in built_with:
        theirs, ours = _release(built_with["kiln"], "versions.kiln", where), _release(__version__, "kiln", where)
        if theirs > ours:
            raise EngineFormatError(f"{where} was written by Kiln {built_with['kiln']}, newer than this Kiln "
                                    f"({__version__}) (header field versions.kiln): upgrade Kiln or rebuild the "
                                    f"engine with this one")
    if "torch" in built_with:
        theirs = _release(built_with["torch"], "versions.torch", where)
        ours = _release(torch.__version__, "torch", where)
        if theirs[0] != ours[0]:
            raise EngineFormatError(f"{where} was built with torch {built_with['torch']}, this is torch "
                                    f"{torch.__version__} (header field versions.torch): engines do not move "
                                    f"between torch major versions; rebuild it here")


def check_compatible(built_on: dict, built_with: dict, where: str) -> None:
    """Raise DeviceMismatchError if this machine cannot run an engine built on ``built_on``; EngineFormatError
    if the record is malformed or the engine comes from a Kiln or torch whose engines this one does not read."""
    if not isinstance(built_on, dict) or "type" not in built_on:
        raise EngineFormatError(f"{where}: device record is malformed")
    check_versions(built_with, where)  # unpack checked these already; a caller may come without unpack
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
    elif built_on["type"] == "cpu":
        _check_cpu(built_on, where)
    else:
        raise DeviceMismatchError(f"{where} was built for an unknown device type {built_on['type']!r}")


def _check_cpu(built_on: dict, where: str) -> None:
    machine = built_on.get("machine")
    if machine is not None and machine != platform.machine():
        raise DeviceMismatchError(f"{where} was built for a {machine} CPU (header field device.machine), this "
                                  f"machine is {platform.machine()}; rebuild the engine here")
    needed = built_on.get("cpu_capability")
    here = cpu_capability()
    if needed is None or needed == here:
        return
    rank_needed, rank_here = _CAPABILITY_RANK.get(needed), _CAPABILITY_RANK.get(here)
    if rank_needed is not None and rank_here is not None and rank_here < rank_needed:
        raise DeviceMismatchError(f"{where} was built for a CPU with {needed} (header field device.cpu_capability), "
                                  f"this CPU offers {here}; rebuild the engine here")


# -- engines that follow the model: loading on another device, torch or Kiln ----------------------------------
def _name(d: dict) -> str:
    if d.get("type") == "cuda":
        cap = d.get("capability") or []
        return f"GPU {d.get('name')!r} (compute capability {'.'.join(map(str, cap))})"
    extra = ", ".join(str(d[k]) for k in ("machine", "cpu_capability") if d.get(k))
    return f"CPU {d.get('name')!r}" + (f" ({extra})" if extra else "")


def _same_device(built_on: dict, here: dict) -> bool:
    if built_on.get("type") != here["type"]:
        return False
    if here["type"] == "cuda":
        return built_on.get("name") == here["name"] and list(built_on.get("capability", [])) == here["capability"]
    return all(built_on.get(k) in (None, here[k]) for k in ("machine", "cpu_capability"))


def version_notes(built_with: dict, where: str) -> list[str]:
    """What ``check_versions`` would refuse, as notes (a malformed version string is still an error)."""
    from ..version import __version__
    notes = []
    if not isinstance(built_with, dict):
        raise EngineFormatError(f"{where}: header field versions must be an object, got {type(built_with).__name__}")
    ours = _release(__version__, "kiln", where)
    if "kiln" in built_with and _release(built_with["kiln"], "versions.kiln", where) > ours:
        notes.append(f"written by Kiln {built_with['kiln']}, newer than this Kiln ({__version__}), in an engine "
                     f"format version this Kiln reads; header fields this Kiln does not know are ignored")
    if "torch" in built_with:
        theirs = _release(built_with["torch"], "versions.torch", where)
        if theirs[0] != _release(torch.__version__, "torch", where)[0]:
            notes.append(f"built with torch {built_with['torch']}, running on torch {torch.__version__}")
    return notes


def place(header: dict, device: str | None, strict: bool, where: str) -> tuple[dict, list[str]]:
    """(the header of the engine as it runs here, notes on what changed). ``device``: where to run it (None:
    where it was built when that is here, else the CPU). ``strict``: refuse, as Kiln always did, an engine
    built for another device, by a newer Kiln or with another torch major (DeviceMismatchError /
    EngineFormatError). Otherwise the engine moves: the header's device record becomes this device's (the
    original kept as ``built_for``) and its config's device the target; the engine's tactics that do not apply
    here are replaced when they are bound (each noted), its memory plan is made on the first run."""
    built_on = header["device"]
    if strict:
        check_compatible(built_on, header["versions"], where)
        if device is not None and torch.device(device).type != built_on["type"]:
            raise DeviceMismatchError(f"{where} was built for {_name(built_on)}; strict_device=True keeps it there "
                                      f"(device={device!r} asked for another)")
        return header, []
    notes = version_notes(header["versions"], where)
    if device is None:
        device = header["config"].get("device", "cpu") if built_on.get("type") == "cpu" or \
            torch.cuda.is_available() else "cpu"
    here = describe(device)
    if built_on.get("type") == "cuda" and here["type"] == "cuda" and device == "cuda":
        device = header["config"].get("device", "cuda")  # cuda:N as built, when this machine has it
    if _same_device(built_on, here):
        if "built_for" in header:
            notes.insert(0, f"built for {_name(header['built_for'])} (header field 'built_for'), moved here")
        return header, notes
    notes.insert(0, f"built for {_name(built_on)}, running on {_name(here)}: tactics that do not apply here are "
                    f"replaced (listed below), the activation memory is planned on the first run")
    return dict(header, device=here, built_for=built_on, config=dict(header["config"], device=device)), notes
