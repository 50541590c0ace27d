"""TensorRT's ITimingCache over Kiln's timing cache (kiln/tune/cache.py, a JSON file of tuning results).

``serialize()`` gives the JSON file's bytes; ``config.create_timing_cache(data)`` reads them back. Kiln's
BuilderConfig names a cache file, so a build with a cache set writes it to a temporary file, builds, and reads
the new entries back into the ITimingCache, as TensorRT's builder adds to the cache it was given.

Kiln's keys include the device, library versions and tf32, so an entry from another device is never used for a
layer here (it stays in the cache): ``ignore_mismatch`` is accepted and has nothing to decide.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile

from .. import errors
from ..tune.cache import FORMAT, VERSION, well_formed


class ITimingCache:
    """Tactic timings that a later build reuses instead of timing again."""

    def __init__(self, entries: dict | None = None):
        self.entries: dict[str, dict] = dict(entries or {})

    @staticmethod
    def from_bytes(data) -> "ITimingCache":
        """The cache serialized in ``data`` (empty for no bytes); BuildError if it is not a Kiln timing cache."""
        data = bytes(data or b"")
        if not data:
            return ITimingCache()
        try:
            d = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise errors.BuildError(f"timing cache bytes are not a Kiln timing cache ({type(e).__name__}: {e}); "
                                    f"a TensorRT timing cache cannot be read by Kiln: start from b''") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("entries"), dict):
            raise errors.BuildError("timing cache bytes are not a Kiln timing cache: start from b''")
        if d.get("version") != VERSION:
            raise errors.BuildError(f"timing cache has format version {d.get('version')!r}; this Kiln reads {VERSION}")
        return ITimingCache({k: v for k, v in d["entries"].items() if well_formed(v)})

    def serialize(self) -> bytes:
        """The cache as bytes (Kiln's timing-cache JSON), for ``IBuilderConfig.create_timing_cache`` or a file."""
        return json.dumps({"format": FORMAT, "version": VERSION, "entries": self.entries}, sort_keys=True).encode()

    def combine(self, input_cache: "ITimingCache", ignore_mismatch: bool = False) -> bool:  # noqa: ARG002 - see above
        """Add the entries of ``input_cache`` that this one lacks."""
        if not isinstance(input_cache, ITimingCache):
            raise errors.InputError(f"combine: expected an ITimingCache, got {type(input_cache).__name__}")
        for k, v in input_cache.entries.items():
            self.entries.setdefault(k, v)
        return True

    def reset(self) -> bool:
        """Remove every entry; returns True."""
        self.entries.clear()
        return True

    def __len__(self) -> int:
        return len(self.entries)

    @contextlib.contextmanager
    def as_file(self):
        """A temporary cache file holding the entries, read back into them when the block ends."""
        fd, path = tempfile.mkstemp(prefix="kiln-trt-timing-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.serialize())
            yield path
            with open(path, "rb") as f:
                self.entries.update(ITimingCache.from_bytes(f.read()).entries)
        finally:
            with contextlib.suppress(OSError):
                os.remove(path)
