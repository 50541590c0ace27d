"""How the inputs of an elementwise op are brought together before torch broadcasts them."""
from __future__ import annotations

import torch


def co_locate(*ts):
    """The tensors on one device: type propagation runs kernels on ``meta`` tensors but hands small
    constants over as real CPU tensors, and torch mixes the two only for 0-d tensors."""
    if any(t is not None and t.is_meta for t in ts):
        return [t if t is None or t.is_meta else t.to("meta") for t in ts]
    return list(ts)


def binary_args(ctx, attrs: dict, inputs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """A and B of a binary op, co-located; before opset 7 B is broadcast the old way.

    Old opsets broadcast B only when ``broadcast=1``, aligned to A at ``axis`` rather than at A's trailing
    dims; adding trailing unit dims to B turns that into numpy broadcasting.
    """
    a, b = co_locate(inputs[0], inputs[1])
    if ctx.opset < 7 and attrs.get("broadcast", 0) and "axis" in attrs and a.dim():
        axis = attrs["axis"] % a.dim()
        extra = a.dim() - axis - b.dim()
        if extra > 0:
            b = b.reshape(tuple(b.shape) + (1,) * extra)
    return a, b
