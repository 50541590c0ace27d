"""What a fused layer does after its GEMM or convolution (its ``epilogue``), and what a kiln::Elementwise
region computes (its ``program``), as small frozen records. This is the one place that reads or writes
their text. To add an epilogue step: an ``ACTIVATIONS`` row for an activation (plus a ``_FORMS`` row when it
has parameters), else a record with ``to_json``, ``apply`` and ``emit`` and its ``_FORMS`` row.

An epilogue is a list of steps applied in order to the layer's own (fresh) output, in place. Stored as
text, one string a step (``to_json`` / ``parse_step``):
- an activation (``Activation``): ``"relu"``, ``"sigmoid"``, ``"tanh"``, ``"gelu"``, ``"gelu_tanh"``,
  ``"silu"``, ``"leaky_relu:A"``, ``"elu:A"``, ``"clip:LO:HI"`` (either bound may be empty: open),
  ``"hardsigmoid:A:B"``, ``"hardswish"``, ``"softplus"``, ``"mish"``;
- ``"add:I"`` (``AddInput``: add layer input I, a residual) and ``"mul:I"`` (``MulInput``);
- ``"addq:I:S"`` (``AddQuantized``: add input I stored 8-bit, times its scale S; made by the fp8 chains of
  kiln/quant/rewrite.py);
- ``"scale:S"`` (``Scale``: multiply by S) and ``"cast:T"`` (``Cast``: round to ONNX element type T), which
  the quantized kernels give their own epilogues; no pass stores them, and an engine file may not hold them.

Each step has one torch meaning (``apply``, in place where torch allows it) and one meaning as ONNX
elementwise ops (``emit``), which the Triton backend compiles into the layer's kernel.

A program is a list of instructions ``"Op(a,b)"`` (``Instr``) whose operands are region inputs ``iN`` or
earlier results ``tN``; a parallel list holds each instruction's ONNX attributes as ``"name=kind:value"``
strings (kind ``i``, ``f`` or ``s``: ``encode_attr`` / ``decode_attrs``).

Graph attributes keep the text, not the records: attributes stay plain JSON values everywhere (the engine
file, the printer, the replay's comparison need no special case, and a loaded file is kept byte for byte).
Readers parse through ``parse_epilogue`` / ``parse_program``, which cache the records, so a kernel that
runs every inference looks them up instead of parsing again.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Callable, NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import FusedStepError
from ..ir.dtype import DType

_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan)"
_INDEX = r"\d{1,4}"  # a layer input index (a layer has far fewer inputs)


def _num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


# -- epilogue steps ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Kind:
    """One activation: the ONNX op it means, the ONNX attribute names of its parameters (in the text's order),
    fixed ONNX attributes, and the torch function that applies it in place."""
    onnx: str
    params: tuple[str, ...]
    fixed: tuple[tuple[str, object], ...]
    run: Callable[..., torch.Tensor]


# name -> its meaning; the text is the name, then ":"-separated parameters (clip: an empty bound is open)
ACTIVATIONS: dict[str, _Kind] = {
    "relu": _Kind("Relu", (), (), lambda y: y.relu_()),
    "sigmoid": _Kind("Sigmoid", (), (), lambda y: y.sigmoid_()),
    "tanh": _Kind("Tanh", (), (), lambda y: y.tanh_()),
    "gelu": _Kind("Gelu", (), (), lambda y: torch.ops.aten.gelu_(y)),
    "gelu_tanh": _Kind("Gelu", (), (("approximate", "tanh"),), lambda y: torch.ops.aten.gelu_(y, approximate="tanh")),
    "silu": _Kind("Swish", (), (), lambda y: F.silu(y, inplace=True)),
    "leaky_relu": _Kind("LeakyRelu", ("alpha",), (), lambda y, a: F.leaky_relu_(y, a)),
    "elu": _Kind("Elu", ("alpha",), (), lambda y, a: F.elu_(y, a)),
    "clip": _Kind("Clip", ("min", "max"), (), lambda y, lo, hi: y.clamp_(lo, hi)),
    "hardsigmoid": _Kind("HardSigmoid", ("alpha", "beta"), (), lambda y, a, b: y.mul_(a).add_(b).clamp_(0, 1)),
    "hardswish": _Kind("HardSwish", (), (), lambda y: F.hardswish(y, inplace=True)),
    "softplus": _Kind("Softplus", (), (), lambda y: F.softplus(y)),
    "mish": _Kind("Mish", (), (), lambda y: F.mish(y, inplace=True)),
}


@dataclass(frozen=True)
class Activation:
    """An activation of ``ACTIVATIONS`` with its parameters (floats; None for an open clip bound)."""
    name: str
    params: tuple = ()

    input = None  # reads no layer input
    stored = True  # may appear in an engine file

    @property
    def label(self) -> str:
        return self.name

    def to_json(self) -> str:
        return ":".join((self.name, *map(_num, self.params)))

    def apply(self, y: torch.Tensor, inputs: list) -> torch.Tensor:
        return ACTIVATIONS[self.name].run(y, *self.params)

    def emit(self, p: "ProgramBuilder") -> None:
        kind = ACTIVATIONS[self.name]
        attrs = dict(kind.fixed)
        attrs.update({k: float(v) for k, v in zip(kind.params, self.params) if v is not None})
        p.emit(kind.onnx, p.cur, **attrs)


@dataclass(frozen=True)
class AddInput:
    """y += layer input ``input`` (a residual)."""
    input: int

    label = "residual"
    stored = True

    def to_json(self) -> str:
        return f"add:{self.input}"

    def apply(self, y, inputs):
        return y.add_(inputs[self.input])

    def emit(self, p):
        p.emit("Add", p.cur, p.operand(self.input))


@dataclass(frozen=True)
class MulInput:
    """y *= layer input ``input``."""
    input: int

    label = "mul"
    stored = True

    def to_json(self) -> str:
        return f"mul:{self.input}"

    def apply(self, y, inputs):
        return y.mul_(inputs[self.input])

    def emit(self, p):
        p.emit("Mul", p.cur, p.operand(self.input))


@dataclass(frozen=True)
class AddQuantized:
    """y += input ``input`` (8-bit codes, zero point 0) * ``scale``, dequantized in float32."""
    input: int
    scale: float

    label = "addq"
    stored = True

    def to_json(self) -> str:
        return f"addq:{self.input}:{_num(self.scale)}"

    def apply(self, y, inputs):
        return y.add_(inputs[self.input].to(torch.float32) * self.scale)

    def emit(self, p):  # the residual times its scale first, then the add
        before, r = p.cur, p.operand(self.input)
        p.emit("Add", before, p.emit("Mul", r, p.const(self.scale)))


@dataclass(frozen=True)
class Scale:
    """y *= ``factor`` (a number written into the kernel)."""
    factor: float

    input = None
    label = "scale"
    stored = False  # made by the quantized kernels for themselves, never stored in an engine file

    def to_json(self) -> str:
        return f"scale:{_num(self.factor)}"

    def apply(self, y, inputs):
        return y.mul_(self.factor)

    def emit(self, p):
        p.emit("Mul", p.cur, p.const(self.factor))


@dataclass(frozen=True)
class Cast:
    """y rounded to ONNX element type ``to`` (e.g. 10, float16): the one step that changes y's type."""
    to: int

    input = None
    label = "cast"
    stored = False  # as Scale: the layer's stored output type would no longer say what it holds

    def to_json(self) -> str:
        return f"cast:{self.to}"

    def apply(self, y, inputs):
        return y.to(DType(self.to).torch)

    def emit(self, p):
        p.emit("Cast", p.cur, to=self.to)


Step = Union[Activation, AddInput, MulInput, AddQuantized, Scale, Cast]

# step name -> (pattern of its parameters after the name, record from the matched groups)
_FORMS: dict[str, tuple[str, Callable[..., Step]]] = {
    **{name: ("", partial(Activation, name)) for name, kind in ACTIVATIONS.items() if not kind.params},
    "leaky_relu": (f":({_FLOAT})", lambda a: Activation("leaky_relu", (float(a),))),
    "elu": (f":({_FLOAT})", lambda a: Activation("elu", (float(a),))),
    "hardsigmoid": (f":({_FLOAT}):({_FLOAT})", lambda a, b: Activation("hardsigmoid", (float(a), float(b)))),
    "clip": (f":({_FLOAT})?:({_FLOAT})?",
             lambda lo, hi: Activation("clip", (None if lo is None else float(lo), None if hi is None else float(hi)))),
    "add": (f":({_INDEX})", lambda i: AddInput(int(i))),
    "mul": (f":({_INDEX})", lambda i: MulInput(int(i))),
    "addq": (f":({_INDEX}):({_FLOAT})", lambda i, s: AddQuantized(int(i), float(s))),
    "scale": (f":({_FLOAT})", lambda s: Scale(float(s))),
    "cast": (r":(\d{1,2})", lambda t: Cast(int(t))),
}
_STEP_RE = {name: re.compile(re.escape(name) + pattern + r"\Z") for name, (pattern, _) in _FORMS.items()}
STEP_NAMES = tuple(sorted(_FORMS))
STORED_STEP_NAMES = tuple(n for n in STEP_NAMES if n not in ("scale", "cast"))  # what an engine file may hold


def parse_step(text: str) -> Step:
    """The record of one step's text; FusedStepError when ``text`` is not one of the forms above."""
    name = text.partition(":")[0] if isinstance(text, str) else None
    m = _STEP_RE[name].match(text) if name in _STEP_RE else None
    if m is None:
        raise FusedStepError(f"epilogue step {text!r} is not one of {', '.join(STEP_NAMES)} with its parameters")
    step = _FORMS[name][1](*m.groups())
    if isinstance(step, Cast):
        _check_cast(step, text)
    return step


def parse_stored_step(text: str) -> Step:
    """``parse_step`` for a step read from an engine file, which holds only the steps passes store."""
    try:
        step = parse_step(text)
    except FusedStepError:
        step = None
    if step is None or not step.stored:
        raise FusedStepError(f"epilogue step {text!r} is not one of {', '.join(STORED_STEP_NAMES)} with its "
                             f"parameters")
    return step


def _check_cast(step: Cast, text: str) -> None:
    try:
        DType(step.to).torch
    except (ValueError, TypeError) as e:
        raise FusedStepError(f"epilogue step {text!r} casts to ONNX type {step.to}, which Kiln has no tensor "
                             f"type for") from e


def parse_epilogue(steps: Sequence) -> tuple[Step, ...]:
    """The records of a layer's ``epilogue`` attribute (strings; records pass through), parsed once per
    distinct list and cached: kernels call this on every inference."""
    if not steps:
        return ()
    return _parse_epilogue(tuple(steps))


@lru_cache(maxsize=4096)
def _parse_epilogue(steps: tuple) -> tuple[Step, ...]:
    return tuple(s if not isinstance(s, str) else parse_step(s) for s in steps)


def apply_steps(y: torch.Tensor, steps: tuple[Step, ...], inputs: list) -> torch.Tensor:
    """``steps`` (records) applied to ``y`` in order, in place where torch allows it."""
    for step in steps:
        y = step.apply(y, inputs)
    return y


def apply_epilogue(y: torch.Tensor, epilogue: Sequence, inputs: list) -> torch.Tensor:
    """A layer's ``epilogue`` attribute (its stored strings, or records) applied to ``y``."""
    return apply_steps(y, parse_epilogue(epilogue), inputs)


def layer_label(base: str, node, bias_slot: int = 2) -> str:
    """A GEMM/convolution layer's kernel name for the build report: its base kernel, then "+bias" and one
    "+step" per epilogue step ("+residual" for an added tensor), e.g. "torch.conv2d+bias+relu"."""
    if len(node.inputs) > bias_slot and node.inputs[bias_slot] is not None:
        base += "+bias"
    for step in parse_epilogue(node.attrs.get("epilogue", [])):
        base += "+" + step.label
    return base


# -- elementwise programs ------------------------------------------------------------------------------------
class Ref(NamedTuple):
    """An instruction's operand: region input ``iN`` (kind "i") or the result of instruction N (kind "t")."""
    kind: str
    index: int

    def __str__(self) -> str:
        return f"{self.kind}{self.index}"


def inp(k: int) -> Ref:
    return Ref("i", k)


def tmp(k: int) -> Ref:
    return Ref("t", k)


_LINE = re.compile(r"([A-Za-z]\w*)\(((?:[it]\d{1,4})(?:,[it]\d{1,4})*)?\)\Z")


@dataclass(frozen=True)
class Instr:
    """One program line: ONNX op ``op`` (default domain) over ``args``."""
    op: str
    args: tuple[Ref, ...]

    def to_json(self) -> str:
        return f"{self.op}({','.join(map(str, self.args))})"

    @staticmethod
    def from_json(line: str) -> "Instr":
        m = _LINE.match(line) if isinstance(line, str) else None
        if m is None:
            raise FusedStepError(f"program line {line!r} is not Op(operands) over iN / tN")
        args = tuple(Ref(a[0], int(a[1:])) for a in m.group(2).split(",")) if m.group(2) else ()
        return Instr(m.group(1), args)


_ATTR = re.compile(rf"(\w+)=(?:i:([-+]?\d{{1,19}})|f:({_FLOAT})|s:(.*))\Z", re.DOTALL)


def encode_attr(name: str, value) -> str:
    """One ONNX attribute of a program line as stored: "name=i:INT", "name=f:FLOAT" or "name=s:TEXT"."""
    kind = "i" if isinstance(value, int) else "f" if isinstance(value, float) else "s"
    return f"{name}={kind}:{value!r}" if kind == "f" else f"{name}={kind}:{value}"


def decode_attrs(items: Sequence[str]) -> dict:
    """A program line's stored attributes as a dict; FusedStepError for an entry of another form."""
    out = {}
    for item in items:
        m = _ATTR.match(item) if isinstance(item, str) else None
        if m is None:
            raise FusedStepError(f"program attribute {item!r} is not name=i:INT, f:FLOAT or s:TEXT")
        name, i, f, s = m.groups()
        out[name] = int(i) if i is not None else float(f) if f is not None else s
    return out


def parse_program(program: Sequence[str], attrs: Sequence = ()) -> tuple[tuple[Instr, dict], ...]:
    """(instruction, its attributes) per line of a kiln::Elementwise ``program`` and ``attrs``, parsed once per
    distinct description and cached. The dicts are shared: read them, never change them."""
    return _parse_program(tuple(program), tuple(map(tuple, attrs)))


@lru_cache(maxsize=1024)
def _parse_program(program: tuple, attrs: tuple) -> tuple[tuple[Instr, dict], ...]:
    return tuple((Instr.from_json(line), decode_attrs(attrs[k]) if k < len(attrs) else {})
                 for k, line in enumerate(program))


class ProgramBuilder:
    """Writes epilogue steps as a program over one operand list: operand 0 ("y") is the layer's result; the
    others are what steps read (``operand``: "bias", a layer input index, each once) and ("const", value)
    numbers (``const``: each its own). ``cur`` is the current value; ``emit`` appends a line and makes its
    result current."""

    def __init__(self):
        self.program: list[Instr] = []
        self.attrs: list[dict] = []
        self.operands: list = ["y"]
        self.cur = inp(0)

    def operand(self, ref) -> Ref:
        if ref not in self.operands:
            self.operands.append(ref)
        return inp(self.operands.index(ref))

    def const(self, value: float) -> Ref:
        self.operands.append(("const", float(value)))
        return inp(len(self.operands) - 1)

    def emit(self, op: str, *args: Ref, **attrs) -> Ref:
        self.program.append(Instr(op, args))
        self.attrs.append(attrs)
        self.cur = tmp(len(self.program) - 1)
        return self.cur
