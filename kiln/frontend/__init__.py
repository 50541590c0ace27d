"""Model importers."""
from .onnx import parse

__all__ = ["parse"]
