"""The timing cache: a JSON file of tuning results keyed by what decides them.

A key is the SHA-256 of a canonical JSON of (op signature with its attributes, input shapes and dtypes, the
candidate set, the device's name and capability, kiln/torch/triton versions, tf32). An entry is
``{"what": short description, "tactic": {"name", "params"}, "times": {candidate: ms}, "rejected":
{candidate: reason}}``. A file that cannot be read or parsed gives a warning and is ignored (the build
times everything again and the file is rewritten when saved), never an error.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

log = logging.getLogger("kiln.tune")

FORMAT = "kiln-timing-cache"
VERSION = 1


class TimingCache:
    def __init__(self, entries: dict | None = None, path: str | None = None):
        self.entries: dict[str, dict] = dict(entries or {})
        self.path = path
        self.hits = 0
        self.misses = 0
        self._new: set[str] = set()

    # -- lookup ----------------------------------------------------------------------------------
    def get(self, key: str) -> dict | None:
        e = self.entries.get(key)
        if e is None:
            self.misses += 1
        else:
            self.hits += 1
        return e

    def put(self, key: str, entry: dict) -> None:
        self.entries[key] = entry
        self._new.add(key)

    def __len__(self) -> int:
        return len(self.entries)

    # -- files -----------------------------------------------------------------------------------
    @staticmethod
    def load(path: str | os.PathLike | None) -> "TimingCache":
        """The cache in ``path``; empty when the file does not exist or is not a timing cache (with a warning)."""
        if path is None:
            return TimingCache()
        return TimingCache(read_entries(path), str(path))

    def merge(self, other: "TimingCache | dict") -> None:
        entries = other.entries if isinstance(other, TimingCache) else other
        for k, v in entries.items():
            self.entries.setdefault(k, v)

    def save(self, path: str | os.PathLike | None = None) -> None:
        """Write the entries (merged with what the file holds now, ours winning) atomically."""
        path = path or self.path
        if path is None:
            return
        entries = read_entries(path, quiet=True)
        entries.update(self.entries)
        p = Path(path)
        if p.parent and not p.parent.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, "entries": entries}, indent=1,
                                  sort_keys=True))
        os.replace(tmp, p)


def read_entries(path, quiet: bool = False) -> dict:
    p = Path(path)
    if not p.exists():
        return {}
    why = None
    try:
        d = json.loads(p.read_text())
        if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("entries"), dict):
            why = "it is not a Kiln timing cache"
        elif d.get("version") != VERSION:
            why = f"it has format version {d.get('version')!r}, this Kiln reads {VERSION}"
        else:
            return {k: v for k, v in d["entries"].items() if isinstance(v, dict) and isinstance(v.get("tactic"), dict)}
    except (OSError, UnicodeDecodeError, ValueError) as e:
        why = f"it cannot be read ({type(e).__name__}: {e})"
    if not quiet:
        msg = f"timing cache {str(p)!r} is ignored: {why}; every layer is timed again and the file rewritten"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        log.warning(msg)
    return {}


def make_key(signature: dict) -> str:
    """A stable key for a JSON-able ``signature``."""
    text = json.dumps(signature, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
