"""Compiled kernels, cached: in memory by the hash of what they were generated from, on disk by the hash of
their source text.

Triton's ``@jit`` reads a kernel's source from its file, so generated text is written to
``<cache dir>/<sha256 of the text>.py`` and imported from there; Triton then caches the binaries itself
(keyed by that source, the device and its own version) in its own cache directory. A file whose content does
not hash to its name is rewritten before use: the cache can save work, never change what runs.
The text always comes from the generator (at engine load, from the stored description), never from the
engine file.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Callable

_lock = threading.Lock()
_memory: dict[str, ModuleType] = {}
_cache_dir: Path | None = None
stats = {"generated": 0, "memory_hits": 0, "disk_hits": 0, "disk_writes": 0}


def cache_dir() -> Path:
    """Where generated sources are kept: set_cache_dir's, else $XDG_CACHE_HOME/kiln/triton or ~/.cache/kiln/triton."""
    if _cache_dir is not None:
        return _cache_dir
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kiln" / "triton"


def set_cache_dir(path: str | os.PathLike | None) -> None:
    """Keep generated sources under ``path`` (None: the default location)."""
    global _cache_dir
    _cache_dir = None if path is None else Path(path)


def clear_memory() -> None:
    """Forget the compiled modules of this process (the disk cache stays)."""
    with _lock:
        _memory.clear()


def digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def load(key: str, generate: Callable[[], str]) -> ModuleType:
    """The module for ``key``: from memory, else generate its text and import it through the disk cache."""
    mod = _memory.get(key)
    if mod is not None:
        stats["memory_hits"] += 1
        return mod
    with _lock:
        mod = _memory.get(key)
        if mod is not None:
            stats["memory_hits"] += 1
            return mod
        source = generate()
        stats["generated"] += 1
        mod = _import(source)
        _memory[key] = mod
        return mod


def _import(source: str) -> ModuleType:
    name = hashlib.sha256(source.encode()).hexdigest()
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:  # an unwritable home: a private directory under the system's temp dir
        import tempfile
        d = Path(tempfile.gettempdir()) / f"kiln-triton-{os.getuid() if hasattr(os, 'getuid') else 0}"
        d.mkdir(parents=True, exist_ok=True)
    path = d / f"kiln_{name[:32]}.py"
    try:
        ok = path.read_text() == source
    except OSError:
        ok = False
    if ok:
        stats["disk_hits"] += 1
    else:
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)  # atomic: concurrent processes never see a half-written file
        stats["disk_writes"] += 1
    spec = importlib.util.spec_from_file_location(f"kiln_triton_{name[:32]}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    mod.__kiln_source__ = source  # type: ignore[attr-defined]
    return mod
