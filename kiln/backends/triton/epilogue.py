"""A layer's epilogue (fused.py's step list, plus an optional bias, scale and cast) as an elementwise
program over the output of a cuBLAS/cuDNN call: one generated kernel, one pass, in place.

``epilogue_program(steps, ...)`` turns ``["relu", "add:3"]`` into ``["Relu(t0)", "Add(t1,i2)"]`` with the
operand list it reads; the elementwise generator does the rest (broadcasting a per-channel bias, a
residual of any layout, writing into a slice of a larger tensor).
"""
from __future__ import annotations

from .ops import Unsupported

# epilogue step -> (ONNX op, attribute names of its ":"-separated parameters, fixed attributes)
_STEPS = {
    "relu": ("Relu", (), {}),
    "sigmoid": ("Sigmoid", (), {}),
    "tanh": ("Tanh", (), {}),
    "gelu": ("Gelu", (), {}),
    "gelu_tanh": ("Gelu", (), {"approximate": "tanh"}),
    "silu": ("Swish", (), {}),
    "leaky_relu": ("LeakyRelu", ("alpha",), {}),
    "elu": ("Elu", ("alpha",), {}),
    "clip": ("Clip", ("min", "max"), {}),
    "hardsigmoid": ("HardSigmoid", ("alpha", "beta"), {}),
    "hardswish": ("HardSwish", (), {}),
    "softplus": ("Softplus", (), {}),
}
EPILOGUE_OPSET = 10  # Clip takes its bounds as attributes before opset 11: the steps carry them as numbers


def epilogue_program(steps: list[str], has_bias: bool) -> tuple[list[str], list[dict], list]:
    """(program, attrs per line, operands) for y [+ bias] then ``steps``.

    Operands: "y" (the GEMM/conv output, i0), "bias" (i1 when present), then layer input indices for
    ``add:I``/``mul:I``/``addq:I:S`` steps and ("const", value) for ``scale:S`` / ``addq`` steps, in the order
    they appear.

    Besides fused.py's steps this takes ``scale:S`` and ``cast:T`` (T an ONNX element type code), which
    ``apply_epilogue`` (the plain kernel, and so the fallback) must learn before a pass emits them."""
    operands: list = ["y"]
    program, attrs = [], []
    cur = "i0"

    def operand(ref) -> str:
        if ref not in operands:
            operands.append(ref)
        return f"i{operands.index(ref)}"

    def emit(line: str, a: dict) -> None:
        nonlocal cur
        program.append(line)
        attrs.append(a)
        cur = f"t{len(program) - 1}"

    if has_bias:
        emit(f"Add({cur},{operand('bias')})", {})
    for step in steps:
        name, *p = step.split(":")
        if name in ("add", "mul"):
            emit(f"{'Add' if name == 'add' else 'Mul'}({cur},{operand(int(p[0]))})", {})
            continue
        if name == "addq":  # add input I stored 8-bit (fp8 codes): dequantized, times its scale S, first
            before, r = cur, operand(int(p[0]))
            operands.append(("const", float(p[1])))
            emit(f"Mul({r},i{len(operands) - 1})", {})
            emit(f"Add({before},{cur})", {})
            continue
        if name == "scale":  # multiply by a number, written into the source
            operands.append(("const", float(p[0])))
            emit(f"Mul({cur},i{len(operands) - 1})", {})
            continue
        if name == "cast":  # round to another element type (ONNX code), e.g. "cast:10" for float16
            emit(f"Cast({cur})", {"to": int(p[0])})
            continue
        if name not in _STEPS:
            raise Unsupported(f"epilogue step {step!r} has no Triton generator")
        op, names, fixed = _STEPS[name]
        a = dict(fixed)
        for k, v in zip(names, p):
            if v != "":
                a[k] = float(v)
        emit(f"{op}({cur})", a)
    return program, attrs, operands
