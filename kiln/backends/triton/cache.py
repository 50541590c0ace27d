"""Compiled kernels, cached: in memory by the hash of what they were generated from, on disk by the hash of
their source text.

Triton's ``@jit`` reads a kernel's source (``inspect.getsource``), so generated text is written to
``<cache dir>/<sha256 of the text>.py``; Triton then caches the binaries itself (keyed by that source, the device
and its own version) in its own cache directory. A file whose content does not hash to its name is rewritten
before use: the cache can save work, never change what runs.
The text always comes from the generator (at engine load, from the stored description), never from the
engine file.

The cache folder is untrusted until checked. The module is compiled from the verified text in memory and its
lines are handed to ``linecache`` for Triton to read, never imported: Python's importer would run a matching
``__pycache__/*.pyc`` instead of the text, and anyone able to write the folder could plant one. The folder is
made 0700 and used only when it is a real directory (not a symlink) of this user that no one else can write;
otherwise a fresh private temporary folder (``tempfile.mkdtemp``) is used, with a logged warning.
"""
from __future__ import annotations

import hashlib
import linecache
import logging
import os
import stat
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Callable

_lock = threading.Lock()
_memory: dict[str, ModuleType] = {}
_cache_dir: Path | None = None
_dir_lock = threading.Lock()  # (load holds _lock while it imports: usable_dir has its own)
_fallback: dict[Path, Path] = {}  # refused folder -> the private temporary folder used instead (warned once)
log = logging.getLogger("kiln.backends")
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
    path = usable_dir(cache_dir()) / f"kiln_{name[:32]}.py"
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
    mod = exec_source(source, str(path), f"kiln_triton_{name[:32]}")
    mod.__kiln_source__ = source  # type: ignore[attr-defined]
    return mod


def exec_source(source: str, filename: str, module_name: str) -> ModuleType:
    """A module made by running ``source`` itself, never through the import system (which would prefer a
    ``.pyc`` beside ``filename``). Its lines go to ``linecache`` under ``filename``, so ``inspect.getsource``
    (Triton's ``@jit``) reads this text, not whatever the file holds by then."""
    # mtime None: linecache.checkcache leaves the entry alone instead of re-reading the file
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(source, filename, "exec", dont_inherit=True)
    mod = ModuleType(module_name)
    mod.__file__ = filename
    exec(code, mod.__dict__)  # noqa: S102 - Kiln's own generated text, checked above, not the file's
    return mod


def usable_dir(d: Path) -> Path:
    """``d``, created 0700 when missing, if it is safe to keep kernels in; else a private temporary folder."""
    why = _unsafe(d)
    if why is None:
        return d
    with _dir_lock:
        alt = _fallback.get(d)
        if alt is None or _unsafe(alt) is not None:
            alt = _fallback[d] = Path(tempfile.mkdtemp(prefix="kiln-triton-"))
            log.warning("Triton kernel cache %r is not used (%s); kernels go to the private folder %r instead",
                        str(d), why, str(alt))
        return alt


def _unsafe(d: Path) -> str | None:
    """Why ``d`` must not hold kernels (None: it may): a kernel file there could be swapped between the check
    and Triton reading it unless only this user can write the folder."""
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(d)
    except OSError as e:
        return f"cannot create it: {e}"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"it is owned by uid {st.st_uid}, not this user ({os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"others can write it (mode {stat.S_IMODE(st.st_mode):o})"
    return None
