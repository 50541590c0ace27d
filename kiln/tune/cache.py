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
from typing import Callable

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
    def get(self, key: str, accept: Callable[[dict], bool] | None = None) -> dict | None:
        """The entry of ``key``; None (a miss) also when ``accept`` refuses it."""
        e = self.entries.get(key)
        if e is not None and accept is not None and not accept(e):
            e = None
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


MAX_FILE_BYTES = 256 << 20  # entries are a few hundred bytes per layer: far past any real model's cache


def read_entries(path, quiet: bool = False) -> dict:
    """The well-formed entries of the cache file ``path``. A timing cache is only speed, so anything wrong with
    it (unreadable, too big, nested too deep, not a timing cache) is a warning and an empty cache; entries
    that are not {tactic: {name, params}, times, rejected} are dropped, with a warning."""
    p = Path(path)
    if not p.exists():
        return {}
    why = None
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"over {MAX_FILE_BYTES >> 20} MiB")
        d = json.loads(data.decode("utf-8"))
        if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("entries"), dict):
            why = "it is not a Kiln timing cache"
        elif d.get("version") != VERSION:
            why = f"it has format version {d.get('version')!r}, this Kiln reads {VERSION}"
        else:
            good = {k: v for k, v in d["entries"].items() if well_formed(v)}
            if len(good) < len(d["entries"]) and not quiet:
                _warn(f"timing cache {str(p)!r}: {len(d['entries']) - len(good)} malformed entries are ignored; "
                      f"those layers are timed again")
            return good
    except RecursionError:  # json's parser recurses per nesting level: a hostile file can exhaust the stack
        why = "it is nested too deeply to be a timing cache"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        why = f"it cannot be read ({type(e).__name__}: {e})"
    if not quiet:
        _warn(f"timing cache {str(p)!r} is ignored: {why}; every layer is timed again and the file rewritten")
    return {}


def well_formed(e) -> bool:
    """What the tuner reads from a hit: {"tactic": {"name": str, "params": dict}, "times": dict, "rejected": dict}."""
    if not isinstance(e, dict):
        return False
    t = e.get("tactic")
    return (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("params", {}), dict)
            and isinstance(e.get("times", {}), dict) and isinstance(e.get("rejected", {}), dict))


def _warn(msg: str) -> None:
    warnings.warn(msg, RuntimeWarning, stacklevel=4)
    log.warning(msg)


def make_key(signature: dict) -> str:
    """A stable key for a JSON-able ``signature``."""
    text = json.dumps(signature, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
