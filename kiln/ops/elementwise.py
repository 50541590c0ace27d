"""Ops of the 'elementwise' family: arithmetic, math functions, variadic Max/Min/Sum/Mean, Clip, Where.

Comparison, logic and bitwise ops live in elementwise_logic.py; unsigned-integer arithmetic that torch
lacks lives in elementwise_int.py.
"""
from __future__ import annotations

import torch

from . import elementwise_logic
from .elementwise_int import as_signed_bits, int_divmod, is_unsigned, narrow, ordered, unordered, widen
from .elementwise_broadcast import binary_args, co_locate
from .registry import OpSet

ops = OpSet("elementwise")

# -- binary arithmetic ------------------------------------------------------------------------------


def _wrapping(fn):
    def kernel(ctx, inputs, attrs):
        a, b = binary_args(ctx, attrs, inputs)
        return narrow(fn(widen(a), widen(b)), a.dtype)
    kernel.__doc__ = f"Elementwise {fn.__name__} with numpy broadcasting; integers wrap around."
    return kernel


ops.add("Add", _wrapping(torch.add), elementwise=True, broadcasting=True, host=True)
ops.add("Sub", _wrapping(torch.sub), elementwise=True, broadcasting=True, host=True)
ops.add("Mul", _wrapping(torch.mul), elementwise=True, broadcasting=True, host=True)


@ops.op("Div", elementwise=True, broadcasting=True, host=True)
def div(ctx, inputs, attrs):
    """A / B; integer division truncates toward zero (division by zero gives 0)."""
    a, b = binary_args(ctx, attrs, inputs)
    if a.dtype.is_floating_point or a.dtype.is_complex:
        return torch.div(a, b)
    return int_divmod(a, b, "div")


@ops.op("Mod", elementwise=True, broadcasting=True, host=True)
def mod(ctx, inputs, attrs):
    """Remainder with the sign of B (fmod=0, Python style) or of A (fmod=1, C fmod)."""
    a, b = binary_args(ctx, attrs, inputs)
    fmod = attrs.get("fmod", 0)
    if not a.dtype.is_floating_point:
        return int_divmod(a, b, "fmod" if fmod else "mod")
    if fmod:
        return torch.fmod(a, b)
    r = torch.remainder(a, b)
    # An exact multiple gives a zero carrying B's sign (as numpy and the ONNX spec do).
    return torch.where(r == 0, torch.copysign(torch.zeros_like(r), b), r)


@ops.op("Pow", elementwise=True, broadcasting=True)
def pow_(ctx, inputs, attrs):
    """X ** Y; Y may have another numeric type than X, the result has X's type."""
    x, y = binary_args(ctx, attrs, inputs)
    y = widen(y)
    if x.dtype.is_floating_point:
        ct = torch.promote_types(x.dtype, y.dtype) if y.dtype.is_floating_point else x.dtype
        return torch.pow(x.to(ct), y.to(ct)).to(x.dtype)
    if y.dtype.is_floating_point:
        # Integer base, real exponent: float64 keeps integral results exact before truncating back.
        return torch.pow(x.to(torch.float64), y.to(torch.float64)).to(x.dtype)
    return narrow(torch.pow(widen(x), y.to(widen(x).dtype)), x.dtype)


# -- unary ------------------------------------------------------------------------------------------


def _unary(fn):
    def kernel(ctx, inputs, attrs):
        return fn(inputs[0])
    kernel.__doc__ = f"Elementwise {fn.__name__}."
    return kernel


for _name, _fn in {
    "Acos": torch.acos, "Acosh": torch.acosh, "Asin": torch.asin, "Asinh": torch.asinh, "Atan": torch.atan,
    "Atanh": torch.atanh, "Ceil": torch.ceil, "Cos": torch.cos, "Cosh": torch.cosh, "Erf": torch.erf,
    "Exp": torch.exp, "Floor": torch.floor, "Log": torch.log, "Reciprocal": torch.reciprocal,
    "Round": torch.round, "Sin": torch.sin, "Sinh": torch.sinh, "Sqrt": torch.sqrt, "Tan": torch.tan,
    "Tanh": torch.tanh,
}.items():
    ops.add(_name, _unary(_fn), elementwise=True, host=_name in ("Floor", "Ceil"),
            same_shape=_name in ("Tanh", "Erf", "Exp", "Log", "Sqrt", "Reciprocal"))


@ops.op("Abs", elementwise=True, host=True, same_shape=True)
def abs_(ctx, inputs, attrs):
    x = inputs[0]
    return x if is_unsigned(x.dtype) else torch.abs(x)


@ops.op("Neg", elementwise=True, host=True, same_shape=True)
def neg(ctx, inputs, attrs):
    return torch.neg(inputs[0])


@ops.op("Sign", elementwise=True, host=True)
def sign(ctx, inputs, attrs):
    x = inputs[0]
    if is_unsigned(x.dtype):
        return (widen(x) != 0).to(x.dtype)
    if x.dtype.is_floating_point:
        return torch.where(torch.isnan(x), x, torch.sign(x))  # torch.sign gives 0 for NaN
    return torch.sign(x)


def _float8_as_float(x: torch.Tensor) -> torch.Tensor:
    # torch has no isnan/isinf for float8 types; float32 holds every float8 value, inf and NaN included.
    return x.float() if x.dtype.itemsize == 1 else x


@ops.op("IsNaN", elementwise=True)
def isnan(ctx, inputs, attrs):
    return torch.isnan(_float8_as_float(inputs[0]))


@ops.op("IsInf", elementwise=True)
def isinf(ctx, inputs, attrs):
    """True at +inf (detect_positive=1) and -inf (detect_negative=1)."""
    x = _float8_as_float(inputs[0])
    pos, neg_ = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)
    if pos and neg_:
        return torch.isinf(x)
    if pos:
        return torch.isposinf(x)
    if neg_:
        return torch.isneginf(x)
    return torch.zeros_like(x, dtype=torch.bool)


# -- variadic ---------------------------------------------------------------------------------------


def _fold(fn, inputs: list) -> torch.Tensor:
    out = inputs[0]
    for x in inputs[1:]:
        out = fn(out, x)
    return out


def _extremum(fn):
    def kernel(ctx, inputs, attrs):
        xs = co_locate(*(x for x in inputs if x is not None))
        return unordered(_fold(fn, [ordered(x) for x in xs]), xs[0].dtype)
    kernel.__doc__ = f"Elementwise {fn.__name__} of any number of broadcast inputs; NaN propagates."
    return kernel


ops.add("Max", _extremum(torch.maximum), elementwise=True, broadcasting=True, host=True)
ops.add("Min", _extremum(torch.minimum), elementwise=True, broadcasting=True, host=True)


@ops.op("Sum", elementwise=True)
def sum_(ctx, inputs, attrs):
    """Elementwise sum of any number of broadcast inputs."""
    xs = co_locate(*(x for x in inputs if x is not None))
    return narrow(_fold(torch.add, [widen(x) for x in xs]), xs[0].dtype)


@ops.op("Mean", elementwise=True)
def mean(ctx, inputs, attrs):
    """Elementwise mean of any number of broadcast inputs."""
    xs = co_locate(*(x for x in inputs if x is not None))
    return _fold(torch.add, xs) / len(xs)


@ops.op("Clip", elementwise=True)
def clip(ctx, inputs, attrs):
    """Limit to [min, max] (attributes before opset 11, optional scalar inputs after); min > max gives max."""
    x = inputs[0]
    if ctx.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
        return torch.clamp(x, lo, hi) if lo is not None or hi is not None else x
    x, lo, hi = co_locate(x, inputs[1] if len(inputs) > 1 else None, inputs[2] if len(inputs) > 2 else None)
    if lo is None and hi is None:
        return x
    # Bounds are scalars, possibly stored as shape [1]: keep them from broadcasting the output's shape.
    lo, hi = (None if t is None else ordered(t.reshape(())) for t in (lo, hi))
    return unordered(torch.clamp(ordered(x), lo, hi), x.dtype)


@ops.op("Where", elementwise=True, broadcasting=True, host=True)
def where(ctx, inputs, attrs):
    """Pick X where the condition holds, else Y, with numpy broadcasting of all three."""
    cond, x, y = co_locate(*inputs)
    # torch's CUDA where has no unsigned 16/32/64-bit kernels; it only moves bits, so signed views do.
    return narrow(torch.where(cond, as_signed_bits(x), as_signed_bits(y)), x.dtype)


ops.ops.extend(elementwise_logic.ops.ops)
