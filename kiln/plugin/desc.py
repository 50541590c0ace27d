"""What a plugin's shape rule sees and returns: a tensor's shape and dtype, no data."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorDesc:
    """A tensor's description: ``shape`` (ints; at build time symbolic dims arrive as probe values) and
    ``dtype`` (a torch dtype). A shape rule returns one per output: ``x.like()``, ``x.with_shape(...)``."""

    shape: tuple
    dtype: torch.dtype

    @staticmethod
    def of(t: torch.Tensor) -> "TensorDesc":
        return TensorDesc(tuple(t.shape), t.dtype)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def like(self) -> "TensorDesc":
        """An output with this tensor's shape and dtype."""
        return TensorDesc(self.shape, self.dtype)

    def with_shape(self, *shape) -> "TensorDesc":
        dims = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        return TensorDesc(tuple(int(d) for d in dims), self.dtype)

    def with_dtype(self, dtype: torch.dtype) -> "TensorDesc":
        return TensorDesc(self.shape, dtype)

    def empty(self, device) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype, device=device)
