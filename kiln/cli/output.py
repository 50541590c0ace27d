"""What a subcommand prints on stdout: lines for people, one JSON document with ``--json``, nothing with
``--quiet``.

Every subcommand takes both flags (from the common parser in main.py) and prints through :func:`emit`, so the
rule lives here once: ``--json`` prints the document (indented, one per run; ``kiln serve`` prints one line per
event instead), ``--quiet`` prints nothing on stdout and keeps stderr to errors (no progress, no warnings).
Given together, ``--json`` prints its document and ``--quiet`` silences the rest. The exit status carries the
result either way (see main.py's epilog).
"""
from __future__ import annotations

import json
from typing import Any, Callable


def emit(args, text: str | Callable[[], str] | None, doc: Any = None) -> None:
    """Print ``doc`` as JSON under --json, else ``text`` (a string, or a function making it, so --quiet skips the
    work) unless --quiet."""
    if getattr(args, "json", False):
        if doc is not None:
            print(json.dumps(doc, indent=1, default=str), flush=True)
        return
    if getattr(args, "quiet", False):
        return
    if callable(text):
        text = text()
    if text:
        print(text, flush=True)


def emit_event(args, text: str, doc: dict) -> None:
    """One line per event (a long-running command such as ``kiln serve``): JSON lines under --json."""
    if getattr(args, "json", False):
        print(json.dumps(doc, default=str), flush=True)
    elif not getattr(args, "quiet", False):
        print(text, flush=True)


def quiet(args) -> bool:
    """Whether progress, notes and warnings should stay off (--quiet)."""
    return bool(getattr(args, "quiet", False))
