"""EngineSpec: what the engine reads of the build configuration stored in its header.

The header field ``config`` holds the whole build configuration, as the builder wrote it (kept for
``kiln inspect`` and for files of every Kiln version). The engine runs on what it needs of it: the device,
the optimization profiles and the options of a run (CUDA graphs, TF32). The rest of ``config`` is a record
of how the engine was built; the engine neither reads nor needs it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .profile import Profile

__all__ = ["EngineSpec", "check_device"]


def check_device(dev: str) -> None:
    """Raise ValueError unless ``dev`` is 'cpu', 'cuda' or 'cuda:N' (the builder checks its config with this)."""
    if not (isinstance(dev, str) and (dev == "cpu" or dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit()))):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {dev!r}")


@dataclass(frozen=True)
class EngineSpec:
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    profiles: tuple[Profile, ...] = ()  # a run's input shapes must fit one of them (none: any shapes)
    cuda_graphs: bool = True  # replay each input shape's CUDA graph (GPU engines)
    tf32: bool = False  # float32 convolutions/matmuls may run in TF32 on CUDA

    def __post_init__(self):
        check_device(self.device)
        for p in self.profiles:
            p.validate()

    @staticmethod
    def from_json(config: dict) -> "EngineSpec":
        """The spec of header field ``config`` (a BuilderConfig's JSON): its other keys are left alone."""
        return EngineSpec(device=config.get("device", "cpu"),
                          profiles=tuple(Profile.from_json(p) for p in config.get("profiles", ())),
                          cuda_graphs=config.get("cuda_graphs", True), tf32=config.get("tf32", False))
