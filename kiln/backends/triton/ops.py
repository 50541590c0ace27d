"""The elementwise ops the Triton generator knows: for each, how its result type follows from its operands'
and the Triton expression that computes it. One table row per op, the ONNX meaning beside it.

Operands are Triton expressions held in a *compute type*: float16/bfloat16/float32 compute in float32,
float64 in float64, integers in their own type, bool as int1. Values are rounded to their ONNX type only
where the program asks (Cast) and once at the store, so a fused chain is at least as precise as the
unfused ops.

Math the Triton interpreter lacks (libdevice) goes through small helpers with two bodies: the libdevice
call on the GPU, and a formula of core ``tl`` functions under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)

TL_DTYPE = {
    torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16", torch.float32: "tl.float32",
    torch.float64: "tl.float64", torch.int8: "tl.int8", torch.int16: "tl.int16", torch.int32: "tl.int32",
    torch.int64: "tl.int64", torch.uint8: "tl.uint8", torch.bool: "tl.int1",
}


def compute_tl(dt: torch.dtype) -> str:
    """The Triton type a value of torch dtype ``dt`` is computed in."""
    if dt in (torch.float16, torch.bfloat16, torch.float32):
        return "tl.float32"
    return TL_DTYPE[dt]


class Unsupported(Exception):
    """Raised by an emitter: the op cannot be generated for these operand types (the message says why)."""


# GELU(x) = x * Phi(x), Phi from the Abramowitz & Stegun 7.1.26 erf (|error| < 1.5e-7, absolute, all x) with
# the algebra folded: for a = |x|, w = 0.5 * p(t) * exp(-a^2 / 2), t = 1 / (1 + 0.3275911 a / sqrt 2), and
# Phi = 1 - w (x >= 0) or w (x < 0). On the GPU the reciprocal and the exp are single approximate instructions
# (rcp / ex2 .approx.ftz, relative error ~2^-22): GELU epilogues are arithmetic-bound, and this form is about
# half the instructions of 0.5 * x * (1 + erf(x / sqrt 2)) with a division and a denormal-safe exp.
# GELU needs absolute accuracy only; the Erf op keeps libdevice (relative accuracy near 0).
_GELU_BODY = ("a = tl.abs(x)\n    t = {rcp}\n"
              "    w = t * (0.127414796 + t * (-0.142248368 + t * (0.7107068705 + t * (-0.7265760135 "
              "+ t * 0.5307027145))))\n"
              "    w = w * {ex2}\n"
              "    return x * tl.where(x < 0, w, 1.0 - w)")
_ASM = 'tl.inline_asm_elementwise("{op}.approx.ftz.f32 $0, $1;", "=r,r", [{arg}], dtype=tl.float32, is_pure=True, pack=1)'
_GELU_T = "1.0 + 0.23164190 * a"         # 0.3275911 / sqrt(2)
_GELU_E = "a * a * -0.7213475204444817"  # exp(-a^2 / 2) = 2^(-a^2 log2(e) / 2)
# plain arithmetic: the interpreter's form, and float64's (no 64-bit approximate instructions)
_GELU_PLAIN = _GELU_BODY.format(rcp=f"1.0 / ({_GELU_T})", ex2=f"tl.exp2({_GELU_E})")

# -- helpers: name -> (GPU body, interpreter body); emitted into the generated module when used -----------
HELPERS: dict[str, tuple[str, str]] = {
    "_tanh": ("return libdevice.tanh(x)",
              # tanh(x) = sign(x) * (1 - e) / (1 + e), e = exp(-2|x|): no overflow at large |x|
              "e = tl.exp(-2.0 * tl.abs(x))\n    t = (1.0 - e) / (1.0 + e)\n    return tl.where(x < 0, -t, t)"),
    "_log1p": ("return libdevice.log1p(x)", "return tl.log(1.0 + x)"),
    "_gelu": (_GELU_BODY.format(rcp=_ASM.format(op="rcp", arg=_GELU_T), ex2=_ASM.format(op="ex2", arg=_GELU_E)),
              _GELU_PLAIN),
    "_gelu64": (_GELU_PLAIN, _GELU_PLAIN),
    "_expm1": ("return libdevice.expm1(x)", "return tl.exp(x) - 1.0"),
    "_rint": ("return libdevice.rint(x)",
              # round half to even
              "f = tl.floor(x)\n    d = x - f\n"
              "    return tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, f + (f - 2.0 * tl.floor(f * 0.5))))"),
    "_pow": ("return libdevice.pow(x, y)",
             "r = tl.exp2(y * tl.log2(tl.abs(x)))\n"
             "    yint = tl.floor(y) == y\n"
             "    odd = (y - 2.0 * tl.floor(y * 0.5)) == 1.0\n"
             "    r = tl.where(x < 0, tl.where(yint, tl.where(odd, -r, r), float('nan')), r)\n"
             "    return tl.where(y == 0, 1.0, r)"),
}
HELPER_ARGS = {"_pow": "x, y"}


@dataclass(frozen=True)
class Operand:
    expr: str          # a Triton expression (a name, or a literal for an inlined constant)
    dtype: torch.dtype  # its ONNX/torch type
    literal: float | int | bool | None = None  # the value when the operand is an inlined scalar constant


@dataclass(frozen=True)
class OpRule:
    arity: tuple[int, int]  # (min, max) operands
    emit: Callable  # (operands, attrs, opset, use) -> (expr, result dtype); ``use(helper)`` records a helper


def _fmax(a: str, b: str) -> str:
    return f"tl.maximum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)"


def _fmin(a: str, b: str) -> str:
    return f"tl.minimum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)"


def _kind(dt: torch.dtype) -> str:
    return "f" if dt in FLOATS else "b" if dt == torch.bool else "i" if dt in INTS else "?"


def _need(ops: list[Operand], kinds: str, name: str) -> None:
    for o in ops:
        if _kind(o.dtype) not in kinds:
            raise Unsupported(f"{name} on {str(o.dtype).replace('torch.', '')} is not generated")


def _lit(v: float) -> str:
    return repr(float(v))


def _same(name: str, kinds: str, fn):
    def emit(ops, attrs, opset, use):
        _need(ops, kinds, name)
        return fn(*[o.expr for o in ops]), ops[0].dtype
    return OpRule((1, 1), emit)


def _binary(name: str, kinds: str, fn):
    def emit(ops, attrs, opset, use):
        _need(ops, kinds, name)
        return fn(ops[0].expr, ops[1].expr), ops[0].dtype
    return OpRule((2, 2), emit)


def _compare(fn):
    def emit(ops, attrs, opset, use):
        _need(ops, "fib", "comparison")
        return fn(ops[0].expr, ops[1].expr), torch.bool
    return OpRule((2, 2), emit)


def _helper(name: str, helper: str, expr: str = "{h}({x})"):
    def emit(ops, attrs, opset, use):
        _need(ops, "f", name)
        use(helper)
        return expr.format(h=helper, x=ops[0].expr), ops[0].dtype
    return OpRule((1, 1), emit)


def _pow(ops, attrs, opset, use):
    x, y = ops
    _need([x], "f", "Pow")
    _need([y], "fi", "Pow")
    if y.literal is not None:  # constant exponent: the common cases without pow()
        e = float(y.literal)
        simple = {1.0: "{x}", 2.0: "({x} * {x})", 3.0: "({x} * {x} * {x})", 0.5: "tl.sqrt({x})",
                  -1.0: "(1.0 / {x})", 0.0: "({x} * 0.0 + 1.0)"}
        if e in simple:
            return simple[e].format(x=x.expr), x.dtype
        use("_pow")
        return f"_pow({x.expr}, {_lit(e)})", x.dtype
    use("_pow")
    ye = y.expr if _kind(y.dtype) == "f" else f"{y.expr}.to(tl.float32)"
    return f"_pow({x.expr}, {ye})", x.dtype


def _variadic(name: str, kinds: str, fold):
    def emit(ops, attrs, opset, use):
        _need(ops, kinds, name)
        acc = ops[0].expr
        for o in ops[1:]:
            acc = fold(acc, o.expr, _kind(ops[0].dtype))
        return acc, ops[0].dtype
    return OpRule((1, 16), emit)


def _mean(ops, attrs, opset, use):
    _need(ops, "f", "Mean")
    return f"(({' + '.join(o.expr for o in ops)}) / {float(len(ops))!r})", ops[0].dtype


def _clip(ops, attrs, opset, use):
    _need(ops[:1], "fi", "Clip")
    x = ops[0].expr
    k = _kind(ops[0].dtype)
    mx, mn = (_fmax, _fmin) if k == "f" else (lambda a, b: f"tl.maximum({a}, {b})",
                                              lambda a, b: f"tl.minimum({a}, {b})")
    if opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
        lo = None if lo is None else _lit(lo)
        hi = None if hi is None else _lit(hi)
    else:
        lo = ops[1].expr if len(ops) > 1 else None
        hi = ops[2].expr if len(ops) > 2 else None
    if lo is not None:
        x = mx(x, lo)
    if hi is not None:
        x = mn(x, hi)
    return x, ops[0].dtype


def _where(ops, attrs, opset, use):
    c, a, b = ops
    if c.dtype != torch.bool:
        raise Unsupported("Where with a non-bool condition")
    return f"tl.where({c.expr}, {a.expr}, {b.expr})", a.dtype


def _cast(ops, attrs, opset, use):
    from ...ir.dtype import DType
    try:
        to = DType(int(attrs["to"])).torch
    except (KeyError, ValueError, TypeError) as e:
        raise Unsupported(f"Cast to {attrs.get('to')!r}") from e
    x = ops[0]
    if to not in TL_DTYPE or _kind(x.dtype) == "?":
        raise Unsupported(f"Cast from {x.dtype} to {to} is not generated")
    if to == torch.bool:
        return f"({x.expr} != 0)", to
    if x.dtype == torch.bool:
        return f"{x.expr}.to({compute_tl(to)})", to
    if to in (torch.float16, torch.bfloat16):  # round to the narrow type, then compute on in float32
        return f"{x.expr}.to({TL_DTYPE[to]}).to(tl.float32)", to
    return f"{x.expr}.to({compute_tl(to)})", to


def _gelu(ops, attrs, opset, use):
    _need(ops, "f", "Gelu")
    x = ops[0].expr
    if attrs.get("approximate", "none") == "tanh":
        use("_tanh")
        return f"(0.5 * {x} * (1.0 + _tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x}))))", ops[0].dtype
    if attrs.get("approximate", "none") != "none":
        raise Unsupported(f"Gelu approximate={attrs.get('approximate')!r}")
    helper = "_gelu64" if ops[0].dtype == torch.float64 else "_gelu"
    use(helper)
    return f"{helper}({x})", ops[0].dtype


def _f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32).item())


def _act(name: str, body: str, defaults: dict, helpers: tuple = ()):
    """A float activation whose body is a format string over {x} and its (float) attributes."""
    def emit(ops, attrs, opset, use):
        _need(ops, "f", name)
        for h in helpers:
            use(h)
        vals = {k: _lit(attrs.get(k, v)) for k, v in defaults.items()}
        return body.format(x=ops[0].expr, **vals), ops[0].dtype
    return OpRule((1, 1), emit)


def _isinf(ops, attrs, opset, use):
    _need(ops, "f", "IsInf")
    x = ops[0].expr
    pos, neg = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)
    parts = ([f"({x} == float('inf'))"] if pos else []) + ([f"({x} == -float('inf'))"] if neg else [])
    return (" | ".join(parts) if parts else f"({x} != {x}) & ({x} == {x})"), torch.bool


def _isnan(ops, attrs, opset, use):
    _need(ops, "f", "IsNaN")
    return f"({ops[0].expr} != {ops[0].expr})", torch.bool


def _not(ops, attrs, opset, use):
    _need(ops, "b", "Not")
    return f"({ops[0].expr} == 0)", torch.bool


def _relu(ops, attrs, opset, use):
    _need(ops, "fi", "Relu")
    return f"tl.where({ops[0].expr} < 0, 0, {ops[0].expr})", ops[0].dtype


def _sign(ops, attrs, opset, use):
    _need(ops, "fi", "Sign")
    x = ops[0].expr
    one = "1.0" if _kind(ops[0].dtype) == "f" else "1"
    return f"tl.where({x} > 0, {one}, tl.where({x} < 0, -{one}, {x}))", ops[0].dtype


def _fold_max(a, b, k):
    return _fmax(a, b) if k == "f" else f"tl.maximum({a}, {b})"


def _fold_min(a, b, k):
    return _fmin(a, b) if k == "f" else f"tl.minimum({a}, {b})"


RULES: dict[str, OpRule] = {
    # arithmetic (numpy broadcasting; integers wrap around)
    "Add": _binary("Add", "fi", lambda a, b: f"({a} + {b})"),
    "Sub": _binary("Sub", "fi", lambda a, b: f"({a} - {b})"),
    "Mul": _binary("Mul", "fi", lambda a, b: f"({a} * {b})"),
    "Div": _binary("Div", "f", lambda a, b: f"({a} / {b})"),  # integer Div truncates: left to the op's kernel
    "Pow": OpRule((2, 2), _pow),
    "Max": _variadic("Max", "fi", _fold_max),
    "Min": _variadic("Min", "fi", _fold_min),
    "Sum": _variadic("Sum", "fi", lambda a, b, k: f"({a} + {b})"),
    "Mean": OpRule((1, 16), _mean),
    "Clip": OpRule((1, 3), _clip),
    "Where": OpRule((3, 3), _where),
    "Cast": OpRule((1, 1), _cast),
    # unary math
    "Neg": _same("Neg", "fi", lambda a: f"(-{a})"),
    "Abs": _same("Abs", "fi", lambda a: f"tl.abs({a})"),
    "Sqrt": _same("Sqrt", "f", lambda a: f"tl.sqrt({a})"),
    "Exp": _same("Exp", "f", lambda a: f"tl.exp({a})"),
    "Log": _same("Log", "f", lambda a: f"tl.log({a})"),
    "Reciprocal": _same("Reciprocal", "f", lambda a: f"(1.0 / {a})"),
    "Floor": _same("Floor", "f", lambda a: f"tl.floor({a})"),
    "Ceil": _same("Ceil", "f", lambda a: f"tl.ceil({a})"),
    "Sin": _same("Sin", "f", lambda a: f"tl.sin({a})"),
    "Cos": _same("Cos", "f", lambda a: f"tl.cos({a})"),
    "Erf": _same("Erf", "f", lambda a: f"tl.math.erf({a})"),
    "Round": _helper("Round", "_rint"),
    "Tanh": _helper("Tanh", "_tanh"),
    "Sign": OpRule((1, 1), _sign),
    # activations
    "Relu": OpRule((1, 1), _relu),
    "Sigmoid": _same("Sigmoid", "f", lambda a: f"tl.sigmoid({a})"),
    "Gelu": OpRule((1, 1), _gelu),
    "LeakyRelu": _act("LeakyRelu", "tl.where({x} < 0, {x} * {alpha}, {x})", {"alpha": _f32(0.01)}),
    # NaN must pass through the clamps (ONNX; torch does): plain tl.maximum/minimum may drop it on the GPU.
    "HardSigmoid": _act("HardSigmoid", _fmin(_fmax("{x} * {alpha} + {beta}", "0.0"), "1.0"),
                        {"alpha": _f32(0.2), "beta": 0.5}),
    "HardSwish": _act("HardSwish", "({x} * tl.minimum(tl.maximum({x} * (1.0 / 6.0) + 0.5, 0.0), 1.0))", {}),
    "Softplus": _act("Softplus", "tl.where({x} > 20.0, {x}, _log1p(tl.exp({x})))", {}, ("_log1p",)),
    "Softsign": _act("Softsign", "({x} / (1.0 + tl.abs({x})))", {}),
    "Swish": _act("Swish", "({x} * tl.sigmoid({alpha} * {x}))", {"alpha": 1.0}),
    "Elu": _act("Elu", "tl.where({x} > 0, {x}, {alpha} * _expm1({x}))", {"alpha": 1.0}, ("_expm1",)),
    "Selu": _act("Selu", "({gamma} * tl.where({x} > 0, {x}, {alpha} * _expm1({x})))",
                 {"alpha": _f32(1.67326319217681884765625), "gamma": _f32(1.05070102214813232421875)}, ("_expm1",)),
    "Celu": _act("Celu", f"({_fmax('{x}', '0.0')} + {_fmin('{alpha} * _expm1({x} / {alpha})', '0.0')})",
                 {"alpha": 1.0}, ("_expm1",)),
    "ThresholdedRelu": _act("ThresholdedRelu", "tl.where({x} > {alpha}, {x}, 0.0)", {"alpha": 1.0}),
    "Mish": _act("Mish", "({x} * _tanh(tl.where({x} > 20.0, {x}, _log1p(tl.exp({x})))))", {}, ("_tanh", "_log1p")),
    # predicates and logic
    "IsNaN": OpRule((1, 1), _isnan),
    "IsInf": OpRule((1, 1), _isinf),
    "Equal": _compare(lambda a, b: f"({a} == {b})"),
    "Less": _compare(lambda a, b: f"({a} < {b})"),
    "Greater": _compare(lambda a, b: f"({a} > {b})"),
    "LessOrEqual": _compare(lambda a, b: f"({a} <= {b})"),
    "GreaterOrEqual": _compare(lambda a, b: f"({a} >= {b})"),
    "Not": OpRule((1, 1), _not),
    "And": _binary("And", "b", lambda a, b: f"({a} & {b})"),
    "Or": _binary("Or", "b", lambda a, b: f"({a} | {b})"),
    "Xor": _binary("Xor", "b", lambda a, b: f"({a} ^ {b})"),
}


def can_emit(op_type: str) -> bool:
    """Whether the generator has a rule for ONNX op ``op_type`` (its operand types may still be refused, with
    ``Unsupported``, when a kernel is generated)."""
    return op_type in RULES
