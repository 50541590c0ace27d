"""Engines: the file format and the runtime."""
from .runtime import Engine, ExecutionContext, InferHandle

__all__ = ["Engine", "ExecutionContext", "InferHandle"]
