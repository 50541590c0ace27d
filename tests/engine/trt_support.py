"""Helpers of the kiln.trt tests (a module of its own name: ``from conftest import`` picks whichever conftest
was imported first)."""
import kiln.trt as trt


class RecordingLogger(trt.ILogger):
    """An ILogger that keeps every message at or above ``min_severity``; ``errors`` are those at ERROR or worse."""

    def __init__(self, min_severity=trt.ILogger.VERBOSE):
        self.min_severity = min_severity
        self.messages: list[tuple] = []

    def log(self, severity, msg):
        self.messages.append((severity, msg))

    @property
    def errors(self) -> list[str]:
        return [m for s, m in self.messages if s <= trt.ILogger.ERROR]
