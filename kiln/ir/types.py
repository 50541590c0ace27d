"""Static types of values: tensors (element type + shape with symbolic dims), sequences and optionals."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .dtype import DType

# A dimension is a known size (int), a named symbol such as "batch" (str), or unknown (None).
Dim = Union[int, str, None]
Shape = tuple  # tuple[Dim, ...]


@dataclass(frozen=True)
class TensorType:
    """The static type of a tensor: its element type and shape, either possibly unknown.

    Attributes:
        dtype: the element type, or None when not known yet.
        shape: a tuple with one entry per dimension: an int (known size), a str (a named symbolic size such as
            "batch") or None (unknown); the whole shape is None when even the rank is unknown.
    """

    dtype: DType | None = None
    shape: Shape | None = None  # None: rank unknown

    @property
    def rank(self) -> int | None:
        """The number of dimensions, or None when the rank is unknown."""
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        """True when every dimension is a known int."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        dt = self.dtype.short if self.dtype is not None else "?"
        if self.shape is None:
            return f"{dt}[*]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{dt}[{dims}]"


@dataclass(frozen=True)
class SequenceType:
    """The type of an ONNX sequence value.

    Attributes:
        elem: the type of its elements, or None when not known.
    """

    elem: "ValueType | None" = None

    def __str__(self) -> str:
        return f"seq<{self.elem if self.elem is not None else '?'}>"


@dataclass(frozen=True)
class OptionalType:
    """The type of an ONNX optional value (one element or none).

    Attributes:
        elem: the type of the element it may hold, or None when not known.
    """

    elem: "ValueType | None" = None

    def __str__(self) -> str:
        return f"optional<{self.elem if self.elem is not None else '?'}>"


ValueType = Union[TensorType, SequenceType, OptionalType]
