"""A layer's epilogue (its steps, plus an optional bias) as an elementwise program over the output of a
cuBLAS/cuDNN call: one generated kernel, one pass, in place.

``epilogue_program(steps, ...)`` turns ``["relu", "add:3"]`` into the program ``Relu(t0)``, ``Add(t1,i2)``
(``Instr`` records) with the operand list it reads; each step writes its own lines (its ``emit`` in
kiln/ops/fused_steps.py), and the elementwise generator does the rest (broadcasting a per-channel bias, a
residual of any layout, writing into a slice of a larger tensor).
"""
from __future__ import annotations

from ...errors import FusedStepError
from ...ops.fused_steps import Instr, ProgramBuilder, parse_epilogue
from .ops import Unsupported

EPILOGUE_OPSET = 10  # Clip takes its bounds as attributes before opset 11: the steps carry them as numbers


def epilogue_program(steps, has_bias: bool) -> tuple[list[Instr], list[dict], list]:
    """(program, attrs per line, operands) for y [+ bias] then ``steps`` (stored strings, or records).

    Operands: "y" (the GEMM/conv output, i0), "bias" (i1 when present), then layer input indices for
    ``add:I``/``mul:I``/``addq:I:S`` steps and ("const", value) for ``scale:S`` / ``addq`` steps, in the order
    they appear."""
    try:
        records = parse_epilogue(steps)
    except FusedStepError as e:  # a tactic that cannot take the layer, not a failed build
        raise Unsupported(str(e)) from None
    p = ProgramBuilder()
    if has_bias:
        p.emit("Add", p.cur, p.operand("bias"))
    for step in records:
        step.emit(p)
    return p.program, p.attrs, p.operands
