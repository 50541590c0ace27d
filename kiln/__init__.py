"""Kiln: an open ONNX inference optimizer and runtime."""
# First, before anything imports torch: the CPU thread pool's wait policy is read when torch loads (threads.py).
from . import threads
from .errors import (BuildError, DeviceMismatchError, EngineFormatError, GraphError, InputError, KernelError,
                     KilnError, ModelFormatError, ShapeError, UnsupportedOpError)
from .frontend.onnx import parse
from .ir import DType, Graph, Node, OptionalType, SequenceType, TensorType, Value
from .runtime.interpreter import interpret
from .builder import BuilderConfig, Profile, build
from .engine import Engine, ExecutionContext
from .threads import set_threads

__version__ = "0.1.0"

__all__ = [
    "__version__", "parse", "set_threads", "interpret", "build", "BuilderConfig", "Profile", "Engine", "ExecutionContext",
    "Graph", "Node", "Value", "DType", "TensorType", "SequenceType", "OptionalType",
    "KilnError", "ModelFormatError", "GraphError", "UnsupportedOpError", "InputError", "ShapeError",
    "KernelError", "EngineFormatError", "DeviceMismatchError", "BuildError",
]
