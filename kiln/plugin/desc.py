"""What a plugin's shape rule sees and returns: a tensor's shape and dtype, no data."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorDesc:
    """A tensor's description, without its data. A shape rule gets one per input and returns one per output:
    ``x.like()``, ``x.with_shape(...)``.

    Attributes:
        shape: the dims, as ints (at build time symbolic dims arrive as probe values).
        dtype: the element type, a torch dtype.
    """

    shape: tuple
    dtype: torch.dtype

    @staticmethod
    def of(t: torch.Tensor) -> "TensorDesc":
        """The description of tensor ``t`` (its shape and dtype)."""
        return TensorDesc(tuple(t.shape), t.dtype)

    @property
    def rank(self) -> int:
        """The number of dims."""
        return len(self.shape)

    def like(self) -> "TensorDesc":
        """An output with this tensor's shape and dtype."""
        return TensorDesc(self.shape, self.dtype)

    def with_shape(self, *shape) -> "TensorDesc":
        """An output with this dtype and another shape: ``x.with_shape(n, 4)`` or ``x.with_shape((n, 4))``."""
        dims = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        return TensorDesc(tuple(int(d) for d in dims), self.dtype)

    def with_dtype(self, dtype: torch.dtype) -> "TensorDesc":
        """An output with this shape and another dtype (a torch dtype)."""
        return TensorDesc(self.shape, dtype)

    def empty(self, device) -> torch.Tensor:
        """An uninitialized tensor of this shape and dtype on ``device``."""
        return torch.empty(self.shape, dtype=self.dtype, device=device)
