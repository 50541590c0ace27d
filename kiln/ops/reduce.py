"""Reductions: the Reduce* ops, ArgMax/ArgMin, the CumSum/CumProd scans and TopK."""
from __future__ import annotations

import torch

from .reduce_dtypes import from_arith, from_ordered, highest, lowest, to_arith, to_ordered
from .registry import OpSet

ops = OpSet("reduce")


# ---------------------------------------------------------------------------------------------
# Reduce*: axes come from the attribute up to ReduceSum-11 / others-17, then from an input.


def _reduce_dims(x: torch.Tensor, inputs: list, attrs: dict) -> tuple[int, ...]:
    """The dims to reduce, sorted and non-negative. An empty tuple means: reduce nothing."""
    axes = None
    if len(inputs) > 1 and inputs[1] is not None:
        axes = [int(a) for a in inputs[1].reshape(-1).tolist()]
    elif attrs.get("axes") is not None:
        axes = [int(a) for a in attrs["axes"]]
    if not axes:
        # noop_with_empty_axes only exists in the versions that take axes as an input
        return () if attrs.get("noop_with_empty_axes", 0) else tuple(range(x.dim()))
    rank = max(x.dim(), 1)
    for a in axes:
        if not -rank <= a < rank:
            raise ValueError(f"axis {a} is out of range for a tensor of rank {x.dim()}")
    return tuple(sorted({a % rank for a in axes})) if x.dim() else ()


def _reduced_shape(x: torch.Tensor, dims: tuple[int, ...], keepdims: bool) -> list[int]:
    if keepdims:
        return [1 if i in dims else s for i, s in enumerate(x.shape)]
    return [s for i, s in enumerate(x.shape) if i not in dims]


def _is_int(x: torch.Tensor) -> bool:
    return not x.dtype.is_floating_point and not x.dtype.is_complex and x.dtype != torch.bool


def _sum(x, dims, keep):
    if _is_int(x):
        return from_arith(torch.sum(to_arith(x), dim=dims, keepdim=keep, dtype=torch.int64), x.dtype)
    return torch.sum(x, dim=dims, keepdim=keep, dtype=x.dtype)


def _prod(x, dims, keep):
    if _is_int(x):
        y = to_arith(x).to(torch.int64)
        for d in reversed(dims):  # torch.prod takes one dim at a time
            y = torch.prod(y, dim=d, keepdim=keep)
        return from_arith(y, x.dtype)
    for d in reversed(dims):
        x = torch.prod(x, dim=d, keepdim=keep)
    return x


def _extreme(largest: bool):
    def reduce(x, dims, keep):
        if any(x.shape[d] == 0 for d in dims):
            fill = lowest(x.dtype) if largest else highest(x.dtype)
            return torch.full(_reduced_shape(x, dims, keep), fill, dtype=x.dtype, device=x.device)
        fn = torch.amax if largest else torch.amin
        return from_ordered(fn(to_ordered(x), dim=dims, keepdim=keep), x.dtype)
    return reduce


def _float_work(reduce):
    """Runs a reduction whose result is not an integer (mean, norms, logs) in float64 for integer
    inputs, truncating back to the integer type as ONNX's integer variants do."""
    def run(x, dims, keep):
        if _is_int(x):
            return reduce(x.to(torch.float64), dims, keep).to(x.dtype)
        return reduce(x, dims, keep)
    return run


def _mean(x, dims, keep):
    return torch.mean(x, dim=dims, keepdim=keep)


def _log_sum(x, dims, keep):
    return torch.log(_sum(x, dims, keep))


def _log_sum_exp(x, dims, keep):
    if any(x.shape[d] == 0 for d in dims):
        return torch.full(_reduced_shape(x, dims, keep), float("-inf"), dtype=x.dtype, device=x.device)
    return torch.logsumexp(x, dim=dims, keepdim=keep)


def _square(x):
    w = to_arith(x)
    return from_arith(w * w, x.dtype)


def _abs(x):
    # unsigned values are their own absolute value (and torch has no abs for uint16/32/64)
    return x if x.dtype in (torch.uint8, torch.uint16, torch.uint32, torch.uint64) else torch.abs(x)


def _l2(x, dims, keep):
    return torch.sqrt(_sum(x * x, dims, keep))


# Each op: (elementwise step before the reduction, reduction). With an empty set of axes only the
# elementwise step runs (ONNX: ReduceSumSquare of no axes is Square, ReduceLogSum is Log, ...).
_REDUCTIONS = {
    "ReduceSum": (None, _sum),
    "ReduceMean": (None, _float_work(_mean)),
    "ReduceProd": (None, _prod),
    "ReduceMax": (None, _extreme(True)),
    "ReduceMin": (None, _extreme(False)),
    "ReduceSumSquare": (_square, _sum),
    "ReduceL1": (_abs, _sum),
    "ReduceL2": (None, _float_work(_l2)),
    "ReduceLogSum": (None, _float_work(_log_sum)),
    "ReduceLogSumExp": (None, _float_work(_log_sum_exp)),
}
_NOOP_STEP = {"ReduceL2": _abs, "ReduceLogSum": torch.log}


def _reduce_kernel(op_type: str):
    pre, reduce = _REDUCTIONS[op_type]

    def kernel(ctx, inputs, attrs):
        x = inputs[0]
        dims = _reduce_dims(x, inputs, attrs)
        if not dims:
            step = _NOOP_STEP.get(op_type, pre)
            return step(x) if step is not None else x
        if pre is not None:
            x = pre(x)
        return reduce(x, dims, bool(attrs.get("keepdims", 1)))

    kernel.__doc__ = f"{op_type}: axes from attribute or input, keepdims, noop_with_empty_axes."
    return kernel


for _op in _REDUCTIONS:
    # axes (input 1, opset 13+/18+) are read as Python ints; integer sum/prod/max/min may run on the host
    ops.add(_op, _reduce_kernel(_op), host_inputs=(1,),
            host=_op in ("ReduceSum", "ReduceProd", "ReduceMax", "ReduceMin"))


# ---------------------------------------------------------------------------------------------
# ArgMax / ArgMin


def _arg_extreme(largest: bool):
    def kernel(ctx, inputs, attrs):
        x = to_ordered(inputs[0])
        axis = attrs.get("axis", 0) % max(x.dim(), 1)
        keep = bool(attrs.get("keepdims", 1))
        last = bool(attrs.get("select_last_index", 0))
        fn = torch.argmax if largest else torch.argmin
        if x.dim() == 0:
            idx = torch.zeros((), dtype=torch.int64, device=x.device)
            return idx
        if last:
            # torch picks the first of equal extremes; on the flipped tensor that is the last one
            return x.shape[axis] - 1 - fn(x.flip(axis), dim=axis, keepdim=keep)
        return fn(x, dim=axis, keepdim=keep)
    kernel.__doc__ = f"Arg{'Max' if largest else 'Min'}: axis, keepdims, select_last_index."
    return kernel


ops.add("ArgMax", _arg_extreme(True))
ops.add("ArgMin", _arg_extreme(False))


# ---------------------------------------------------------------------------------------------
# CumSum / CumProd


def _scan(fn, identity):
    def kernel(ctx, inputs, attrs):
        x, axis_t = inputs[0], inputs[1]
        axis = int(axis_t.reshape(-1).tolist()[0]) % max(x.dim(), 1)
        y = to_arith(x)
        if attrs.get("reverse", 0):
            y = y.flip(axis)
        n = y.shape[axis]
        if attrs.get("exclusive", 0) and n > 0:
            # shift by one along the axis, the identity entering first
            first = torch.full_like(y.narrow(axis, 0, 1), identity)
            y = torch.cat([first, y.narrow(axis, 0, n - 1)], dim=axis)
        y = fn(y, dim=axis, dtype=y.dtype)
        if attrs.get("reverse", 0):
            y = y.flip(axis)
        return from_arith(y, x.dtype)
    return kernel


ops.add("CumSum", _scan(torch.cumsum, 0), host_inputs=(1,))
ops.add("CumProd", _scan(torch.cumprod, 1), host_inputs=(1,))


# ---------------------------------------------------------------------------------------------
# TopK


@ops.op("TopK", host_inputs=(1,))
def top_k(ctx, inputs, attrs):
    """TopK: K as attribute (opset 1) or input; axis, largest, sorted; equal values by lower index."""
    x = inputs[0]
    k = int(inputs[1].reshape(-1).tolist()[0]) if len(inputs) > 1 else int(attrs["k"])
    axis = attrs.get("axis", -1) % max(x.dim(), 1)
    largest = bool(attrs.get("largest", 1))
    if not 0 <= k <= x.shape[axis]:
        raise ValueError(f"TopK: k={k} is out of range for axis {axis} of size {x.shape[axis]}")
    # A stable sort keeps equal values in index order, which is the tie rule ONNX asks for
    # (torch.topk does not promise one); descending stable sort keeps it too.
    values, indices = torch.sort(to_ordered(x), dim=axis, descending=largest, stable=True)
    values, indices = values.narrow(axis, 0, k), indices.narrow(axis, 0, k)
    return from_ordered(values, x.dtype), indices
