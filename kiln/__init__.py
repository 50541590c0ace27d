"""Kiln: an open ONNX inference optimizer and runtime."""
# First, before anything imports torch: the CPU thread pool's wait policy is read when torch loads (threads.py).
from . import threads
from .errors import (BuildError, DeviceMismatchError, EngineFormatError, GraphError, InputError, KernelError,
                     KilnError, ModelFormatError, ModelMismatchError, PluginError, ShapeError, UnsupportedOpError)
from .threads import set_threads
from .version import __version__

# Everything else loads torch, so it is imported on first use (PEP 562): `kiln --version` and `import kiln.errors`
# stay fast, and a process that only loads engines never imports the builder (tests/test_imports.py).
_LAZY = {
    "parse": ("frontend.onnx", "parse"), "interpret": ("runtime.interpreter", "interpret"),
    "Engine": ("engine", "Engine"), "ExecutionContext": ("engine", "ExecutionContext"),
    "Profile": ("engine.profile", "Profile"), "build": ("builder", "build"),
    "BuilderConfig": ("builder", "BuilderConfig"), "Refitter": ("builder.refitter", "Refitter"),
    **{name: ("ir", name) for name in ("DType", "Graph", "Node", "OptionalType", "SequenceType", "TensorType",
                                       "Value")},
}

__all__ = [
    "__version__", "parse", "set_threads", "interpret", "build", "BuilderConfig", "Refitter", "Profile", "Engine", "ExecutionContext",
    "Graph", "Node", "Value", "DType", "TensorType", "SequenceType", "OptionalType",
    "KilnError", "ModelFormatError", "GraphError", "UnsupportedOpError", "InputError", "ShapeError",
    "KernelError", "EngineFormatError", "DeviceMismatchError", "BuildError", "PluginError", "ModelMismatchError",
]


def __getattr__(name: str):
    """The names of ``_LAZY`` and subpackages (``kiln.cli``, ``kiln.tune``, ...) are imported on first access,
    as an import statement would."""
    import importlib
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = globals()[name] = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
