"""TensorRT's IProgressMonitor over Kiln's build progress callback.

Kiln's build calls ``progress(stage, done, total, message)`` (stages: parse, passes, layers, tune, memory);
``monitor_progress`` turns those calls into the monitor's phase_start / step_complete / phase_finish. A
step_complete that returns False cancels the build: the callback raises BuildError, which the builder lets
through, so build_serialized_network returns None with the error logged, as TensorRT's does.
"""
from __future__ import annotations

from typing import Callable

from .. import errors

CANCELLED = "build cancelled by the progress monitor"


class IProgressMonitor:
    """Subclass and set ``config.progress_monitor``. Kiln's phases are its build stages (parse, passes,
    layers, tune, memory), none nested (parent_phase is None); a step is one pass, layer or tuned layer."""

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        """Called when build phase ``phase_name`` starts, with its number of steps (``parent_phase`` is always None in
        Kiln); the default does nothing."""
        pass

    def step_complete(self, phase_name: str, step: int) -> bool:
        """Return False to cancel the build."""
        return True

    def phase_finish(self, phase_name: str) -> None:
        """Called when build phase ``phase_name`` ends; the default does nothing."""
        pass


class _Adapter:
    def __init__(self, monitor: IProgressMonitor):
        self.monitor = monitor
        self.open: dict[str, int] = {}  # phase -> steps reported complete

    def __call__(self, stage: str, done: int, total: int, message: str = "") -> None:
        if stage not in self.open:
            for other in list(self.open):  # Kiln's stages follow one another: a new one ends the last
                self._finish(other)
            self.open[stage] = 0
            self.monitor.phase_start(stage, None, int(total))
        while self.open[stage] < done:
            step = self.open[stage]
            self.open[stage] += 1
            if self.monitor.step_complete(stage, step) is False:
                raise errors.BuildError(f"{CANCELLED} (phase {stage!r}, step {step})")
        if total and done >= total:
            self._finish(stage)

    def _finish(self, stage: str) -> None:
        if self.open.pop(stage, None) is not None:
            self.monitor.phase_finish(stage)

    def close(self) -> None:
        for stage in list(self.open):
            self._finish(stage)


def monitor_progress(monitor: IProgressMonitor | None) -> "Callable | None":
    """A progress callback for kiln.build that drives ``monitor`` (None for no monitor)."""
    return None if monitor is None else _Adapter(monitor)
