"""Opening what the user named: an engine file, or an ONNX file built in memory with the build flags."""
from __future__ import annotations

from pathlib import Path

from .errors import CLIError

ENGINE_MAGIC = b"KILNENG\0"


def check_readable(path: str, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{what} {path!r} does not exist")
    if p.is_dir():
        raise CLIError(f"{what} {path!r} is a directory, not a file")
    try:
        with p.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise CLIError(f"cannot read {what} {path!r}: {e.strerror or e}") from None
    return p


def check_writable(path: str, what: str = "output file") -> Path:
    """Refuse an output path that cannot be written, before any work is done."""
    import os
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{what} {path!r} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"cannot write {what} {path!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise CLIError(f"cannot write {what} {path!r}: permission denied")
    return p


def is_engine(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == ENGINE_MAGIC


def plugins_from_args(args):
    """The plugins of the modules named by ``--plugin`` (kiln.plugin.PluginLibrary), or None."""
    names = getattr(args, "plugin", None) or []
    if not names:
        return None
    import os
    import sys
    if "" not in sys.path and os.getcwd() not in sys.path:  # `python -m` puts it there; the console script does not
        sys.path.insert(0, os.getcwd())
    from ..plugin import load_modules
    return load_modules(names)


def open_engine(path: str, args=None, progress=None, quiet: bool = False):
    """An Engine from an engine file, or built from an ONNX file with ``args``' build flags."""
    from ..engine.runtime import Engine
    check_readable(path, "model or engine file")
    plugins = plugins_from_args(args)
    if is_engine(path):
        if args is not None:
            from .buildflags import flags_ignored_for_engine
            if ignored := flags_ignored_for_engine(args):
                raise CLIError(f"{path!r} is an engine file, built already: {', '.join(ignored)} only apply when "
                               f"building from an ONNX model; rebuild with `kiln build` or leave them out")
        return Engine.load(path, plugins=plugins)
    from .buildflags import config_from_args
    from .. import build
    config = config_from_args(args)
    return build(path, config, progress=progress, plugins=plugins)


def open_onnx(path: str):
    """The ModelProto of an ONNX file (for onnxruntime / onnx.reference / the per-layer comparison)."""
    check_readable(path, "ONNX file")
    if is_engine(path):
        raise CLIError(f"{path!r} is a Kiln engine file; this needs the ONNX model it was built from")
    import onnx
    from ..errors import ModelFormatError
    try:
        return onnx.load(path)
    except Exception as e:  # noqa: BLE001 - protobuf raises several error types for a bad file
        raise ModelFormatError(f"{path!r} is not a valid ONNX model: {type(e).__name__}: {e}") from None
