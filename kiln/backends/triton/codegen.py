"""Triton source text from a region's description: elementwise programs, and the shared prelude.

The description is what the engine file stores (``program``, ``attrs``, the opset, scalar constants);
the *specialization* is what a call adds (operand dtypes, each operand's layout, the collapsed rank, the
index width). ``elementwise_source`` maps both to one module's text with a ``kernel`` in it, plus the
order of the launch arguments after the pointers. Nothing here imports triton: the text is data until
``cache.load`` compiles it.

Operand layouts:
- ``flat``: laid out like the (collapsed) output, contiguous: read at the linear index;
- ``strided:MASK``: read at sum(coord_d * stride_d); MASK has one letter per collapsed dim, ``0`` where the
  stride is 0 (a broadcast dim: the term is left out of the source) and ``s`` where it is passed at launch;
- ``scalar``: one element, loaded once per program;
- ``const``: a scalar constant of the engine, written into the source as a literal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .ops import HELPER_ARGS, HELPERS, RULES, TL_DTYPE, Operand, Unsupported, compute_tl


@dataclass(frozen=True)
class ElementwiseSpec:
    program: tuple                 # Instr records (kiln/ops/fused_steps.py), "Op(i0,t1)" as text
    attrs: tuple                   # per line, a dict of decoded sub-node attributes (as sorted item tuples)
    opset: int
    dtypes: tuple                  # torch dtype per region input
    layouts: tuple                 # per input: "flat" | "strided:MASK" | "scalar" | ("const", value)
    rank: int                      # the collapsed rank strided operands are indexed with
    out_layout: str                # "flat" | "strided"
    out_dtype: torch.dtype | None  # None: the program's own result type
    int64: bool                    # 64-bit linear indices


@dataclass(frozen=True)
class Generated:
    source: str
    out_dtype: torch.dtype
    scalar_args: tuple  # names of the launch arguments after the pointers, in order


def literal(value, dtype: torch.dtype) -> str | None:
    """A scalar constant as a typed Triton expression, or None when it cannot be written exactly."""
    if dtype == torch.bool:
        return f"tl.full([], {int(bool(value))}, tl.int1)"
    if dtype.is_floating_point:
        v = float(value)
        if not math.isfinite(v) or dtype == torch.float64:
            return None  # float64 and non-finite constants are loaded instead
        return f"tl.full([], {v!r}, tl.float32)"
    if dtype in TL_DTYPE:
        return f"tl.full([], {int(value)}, {TL_DTYPE[dtype]})"
    return None


def program_types(program, attrs, opset: int, dtypes) -> torch.dtype:
    """The result dtype of a program for these input dtypes (raises Unsupported)."""
    ops = [Operand(f"i{k}", dt) for k, dt in enumerate(dtypes)]
    _, dt = _emit_program(program, attrs, opset, ops, lambda h: None)
    return dt


def _emit_program(program, attrs, opset, inputs: list[Operand], use) -> tuple[list[str], torch.dtype]:
    lines, temps = [], []
    for k, line in enumerate(program):
        rule = RULES.get(line.op)
        if rule is None:
            raise Unsupported(f"{line.op} has no Triton generator")
        lo, hi = rule.arity
        if not lo <= len(line.args) <= hi:
            raise Unsupported(f"{line.op} with {len(line.args)} operands")
        ops = [inputs[r.index] if r.kind == "i" else temps[r.index] for r in line.args]
        a = dict(attrs[k]) if k < len(attrs) else {}
        expr, dt = rule.emit(ops, a, opset, use)
        lines.append(f"t{k} = {expr}")
        temps.append(Operand(f"t{k}", dt))
    return lines, temps[-1].dtype


# float32 -> e4m3, rounding to nearest even and saturating at +-448 (NaN stays NaN). On the GPU (sm_89+) one
# instruction, cvt.rn.satfinite. The interpreter's own conversion (Triton 3.6) neither saturates nor keeps the
# carry when the mantissa rounds up into the next binade (31.6 -> 16, not 32), so there the value is clamped
# and first rounded exactly to a multiple of its e4m3 quantum (2^(exponent - 3), subnormals below 2^-6),
# which the conversion then keeps. The interpreter form calls ``_rint``: the caller adds that helper.
_TO_FP8_GPU = ["@triton.jit", "def _to_fp8(x):", "    return x.to(tl.float8e4nv)"]
_TO_FP8_INTERPRET = ["@triton.jit", "def _to_fp8(x):",
                     "    x = tl.where(x != x, x, tl.minimum(tl.maximum(x, -448.0), 448.0))",
                     "    e = tl.maximum(((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)",
                     "    quantum = tl.exp2((e - 3).to(tl.float32))",
                     "    return (_rint(x / quantum) * quantum).to(tl.float8e4nv)"]


def to_fp8_source(interpret: bool) -> list[str]:
    """Lines of the ``_to_fp8(x)`` helper (float32 -> e4m3, RNE, correct under the interpreter too)."""
    return ["", ""] + (_TO_FP8_INTERPRET if interpret else _TO_FP8_GPU)


def prelude(helpers: set[str], interpret: bool) -> list[str]:
    out = ["import triton", "import triton.language as tl"]
    if not interpret:
        out.append("from triton.language.extra import libdevice")
    for name in sorted(helpers):
        gpu, cpu = HELPERS[name]
        out += ["", "", "@triton.jit", f"def {name}({HELPER_ARGS.get(name, 'x')}):", "    " + (cpu if interpret else gpu)]
    return out


def index_lines(rank: int, int64: bool, need_coords: bool, block: str = "BLOCK") -> list[str]:
    """Linear offsets of this program's block, its mask, and (for strided operands) the coordinates."""
    pid = "tl.program_id(0).to(tl.int64)" if int64 else "tl.program_id(0)"
    out = [f"offs = {pid} * {block} + tl.arange(0, {block})", "mask = offs < N"]
    if need_coords:
        out.append("r = offs")
        for d in range(rank - 1, 0, -1):
            out += [f"c{d} = r % size{d}", f"r = r // size{d}"]
        out.append("c0 = r")
    return out


def strided_offset(prefix: str, rank: int, mask: str | None = None) -> str:
    terms = [f"c{d} * {prefix}{d}" for d in range(rank) if mask is None or mask[d] != "0"]
    return " + ".join(terms) or "0"


def is_strided(layout) -> bool:
    return isinstance(layout, str) and layout.startswith("strided")


def elementwise_source(spec: ElementwiseSpec, interpret: bool) -> Generated:
    helpers: set[str] = set()
    body: list[str] = []
    ptrs = ["out_ptr"]
    scalars = ["N"]
    need_coords = spec.out_layout == "strided" or any(is_strided(lay) for lay in spec.layouts)
    if need_coords:
        scalars += [f"size{d}" for d in range(1, spec.rank)]
    operands = []
    for k, (dt, lay) in enumerate(zip(spec.dtypes, spec.layouts)):
        ct = compute_tl(dt)
        cvt = "" if TL_DTYPE[dt] == ct else f".to({ct})"
        if isinstance(lay, tuple):
            lit = literal(lay[1], dt)
            if lit is None:
                raise Unsupported(f"constant {lay[1]!r} of {dt} cannot be inlined")
            operands.append(Operand(f"a{k}", dt, lay[1]))
            body.append(f"a{k} = {lit}")
            continue
        ptrs.append(f"in{k}_ptr")
        if lay == "flat":
            body.append(f"a{k} = tl.load(in{k}_ptr + offs, mask=mask){cvt}")
        elif lay == "scalar":
            body.append(f"a{k} = tl.load(in{k}_ptr){cvt}")
        else:
            zmask = lay.partition(":")[2] or "s" * spec.rank
            scalars += [f"in{k}_s{d}" for d in range(spec.rank) if zmask[d] != "0"]
            off = strided_offset(f"in{k}_s", spec.rank, zmask)
            body.append(f"a{k} = tl.load(in{k}_ptr + ({off}), mask=mask){cvt}")
        operands.append(Operand(f"a{k}", dt))
    if all(isinstance(lay, tuple) or lay == "scalar" for lay in spec.layouts):
        raise Unsupported("no operand varies per element (a constant region)")
    lines, res_dt = _emit_program(spec.program, spec.attrs, spec.opset, operands, helpers.add)
    body += lines
    out_dt = spec.out_dtype or res_dt
    last = f"t{len(spec.program) - 1}"
    if spec.out_layout == "flat":
        where = "out_ptr + offs"
    else:
        scalars += [f"out_s{d}" for d in range(spec.rank)]
        where = f"out_ptr + ({strided_offset('out_s', spec.rank)})"
    body.append(f"tl.store({where}, {last}.to({TL_DTYPE[out_dt]}), mask=mask)")
    head = index_lines(spec.rank, spec.int64, need_coords)
    src = prelude(helpers, interpret) + [
        "", "", "@triton.jit",
        f"def kernel({', '.join(ptrs + scalars)}, BLOCK: tl.constexpr):",
    ] + ["    " + ln for ln in head + body]
    return Generated("\n".join(src) + "\n", out_dt, tuple(scalars))
