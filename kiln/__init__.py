"""Kiln: an open ONNX inference optimizer and runtime."""
# First, before anything imports torch: the CPU thread pool's wait policy is read when torch loads (threads.py).
from . import threads
from .errors import (BuildError, DeviceMismatchError, EngineFormatError, GraphError, InputError, KernelError,
                     KilnError, ModelFormatError, ModelMismatchError, ShapeError, UnsupportedOpError)
from .frontend.onnx import parse
from .ir import DType, Graph, Node, OptionalType, SequenceType, TensorType, Value
from .runtime.interpreter import interpret
from .engine import Engine, ExecutionContext
from .engine.profile import Profile
from .threads import set_threads
from .version import __version__

__all__ = [
    "__version__", "parse", "set_threads", "interpret", "build", "BuilderConfig", "Refitter", "Profile", "Engine", "ExecutionContext",
    "Graph", "Node", "Value", "DType", "TensorType", "SequenceType", "OptionalType",
    "KilnError", "ModelFormatError", "GraphError", "UnsupportedOpError", "InputError", "ShapeError",
    "KernelError", "EngineFormatError", "DeviceMismatchError", "BuildError", "ModelMismatchError",
]


def __getattr__(name: str):
    """``build``, ``BuilderConfig`` and ``Refitter`` import the builder (and the passes, tuner and quantizer it uses) on first
    use: a process that only loads and runs engines never imports them (tests/test_imports.py). A subpackage
    (``kiln.cli``, ``kiln.tune``, ...) is imported on first access, as an import statement would."""
    if name in ("build", "BuilderConfig"):
        from . import builder
        value = globals()[name] = getattr(builder, name)
        return value
    if name == "Refitter":
        from .builder.refitter import Refitter
        globals()[name] = Refitter
        return Refitter
    if not name.startswith("_"):
        import importlib
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
