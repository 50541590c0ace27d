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
    dtype: DType | None = None
    shape: Shape | None = None  # None: rank unknown

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        dt = self.dtype.short if self.dtype is not None else "?"
        if self.shape is None:
            return f"{dt}[*]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{dt}[{dims}]"


@dataclass(frozen=True)
class SequenceType:
    elem: "ValueType | None" = None

    def __str__(self) -> str:
        return f"seq<{self.elem if self.elem is not None else '?'}>"


@dataclass(frozen=True)
class OptionalType:
    elem: "ValueType | None" = None

    def __str__(self) -> str:
        return f"optional<{self.elem if self.elem is not None else '?'}>"


ValueType = Union[TensorType, SequenceType, OptionalType]
