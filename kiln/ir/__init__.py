"""Kiln's graph IR."""
from .dtype import DType
from .graph import Graph, Node, Value
from .types import OptionalType, SequenceType, TensorType

__all__ = ["DType", "Graph", "Node", "Value", "TensorType", "SequenceType", "OptionalType"]
