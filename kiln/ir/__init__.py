"""Kiln's graph IR: element types (``dtype.py``), value types with symbolic dims (``types.py``), Value, Node and
Graph (``graph.py``), the structural checker (``verify.py``), a text printer (``printer.py``) and tensor
conversions (``convert.py``). Passes rewrite it; the engine file stores it (kiln/engine/graph_json.py)."""
from .dtype import DType
from .graph import Graph, Node, Value
from .types import OptionalType, SequenceType, TensorType

__all__ = ["DType", "Graph", "Node", "Value", "TensorType", "SequenceType", "OptionalType"]
