"""Build progress: a live line with a bar, count and ETA on a terminal; plain lines in a pipe or CI.

Used as the builder's ``progress(stage, done, total, message)`` callback. It writes to stderr so that
stdout keeps only the result (the summary), which scripts may parse.
"""
from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def choose_mode(requested: str, stream: TextIO) -> str:
    """auto -> 'live' on an interactive terminal, else 'plain' (pipes, CI logs, TERM=dumb)."""
    if requested != "auto":
        return requested
    interactive = stream.isatty() and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"
    return "live" if interactive else "plain"


class Progress:
    """Callable progress reporter; ``mode`` is 'live', 'plain' or 'off'."""

    BAR = 24

    def __init__(self, mode: str = "auto", stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.mode = choose_mode(mode, self.stream)
        self.t0 = time.perf_counter()
        self.stage = None
        self.stage_t0 = self.t0
        self.last_plain = 0.0
        self.width = 0

    def __call__(self, stage: str, done: int, total: int, message: str = "") -> None:
        now = time.perf_counter()
        if stage != self.stage:
            self.stage, self.stage_t0 = stage, now
        if self.mode == "live":
            self._live(stage, done, total, message, now)
        elif self.mode == "plain":
            self._plain(stage, done, total, message, now)

    def _eta(self, done: int, total: int, now: float) -> str:
        if done <= 0 or done >= total:
            return ""
        left = (now - self.stage_t0) / done * (total - done)
        return f" ETA {left:.1f}s"

    def _live(self, stage, done, total, message, now) -> None:
        frac = done / total if total else 1.0
        fill = int(frac * self.BAR)
        line = (f"  {stage:<7} [{'#' * fill}{'.' * (self.BAR - fill)}] {done}/{total} "
                f"{message[:40]}{self._eta(done, total, now)}  ({now - self.t0:.1f}s)")
        pad = max(self.width - len(line), 0)
        self.width = len(line)
        self.stream.write("\r" + line + " " * pad)
        if done >= total:  # a finished stage keeps its line; the next one starts below
            self.stream.write("\n")
            self.width = 0
        self.stream.flush()

    def _plain(self, stage, done, total, message, now) -> None:
        # Every step of short stages; long ones (a tuner's thousands) at most every 2 s, plus start and end.
        if total > 30 and 0 < done < total and now - self.last_plain < 2.0:
            return
        if done == 0:  # a stage starting: its first finished step says more
            return
        self.last_plain = now
        self.stream.write(f"[kiln] {stage} {done}/{total}"
                          f"{': ' + message if message else ''}{self._eta(done, total, now)} "
                          f"({now - self.t0:.2f}s)\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.mode == "live" and self.width:
            self.stream.write("\n")
            self.stream.flush()
