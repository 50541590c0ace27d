"""Tactic selection: a tuner that times the candidates of kiln/tactics on the target device and checks them
(``tuner``), and a timing cache file (``cache``); ``layer_threads`` measures which CPU layers run on one
thread. The candidates themselves and their kernels live in kiln/tactics.

Choices are stored in the engine (``node.meta["tactic"]``: name + params) and applied at load; they can be
exported (``export_choices``) and replayed at a later build (``BuilderConfig(tactic_replay=path)``).
"""
from __future__ import annotations

import json
from pathlib import Path

from .cache import TimingCache
from .tuner import Timer, Tuner, TuneResult

__all__ = ["TimingCache", "Timer", "Tuner", "TuneResult", "export_choices", "load_choices"]

REPLAY_FORMAT = "kiln-tactics"


def export_choices(engine, path: str | Path | None = None) -> dict:
    """The engine's tactic per layer as plain data ``{"format", "version", "device", "layers": {label: {name,
    params}}}``; written as JSON to ``path`` when given. ``BuilderConfig(tactic_replay=path)`` replays it."""
    data = {"format": REPLAY_FORMAT, "version": 1, "device": engine.header.get("device"),
            "layers": {k: v for k, v in sorted(engine.tactic_choices.items())}}
    if path is not None:
        Path(path).write_text(json.dumps(data, indent=1, sort_keys=True))
    return data


def load_choices(path: str | Path) -> dict:
    """{layer label: {name, params}} from a file written by ``export_choices``."""
    from ..errors import BuildError
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BuildError(f"tactic replay file {str(path)!r} cannot be read: {e}") from None
    if not isinstance(d, dict) or d.get("format") != REPLAY_FORMAT or not isinstance(d.get("layers"), dict):
        raise BuildError(f"tactic replay file {str(path)!r} is not a file written by kiln.tune.export_choices")
    return d["layers"]
