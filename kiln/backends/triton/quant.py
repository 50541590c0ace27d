"""One-pass kernels around 8-bit GEMMs and convolutions (kiln::QLinear / kiln::QConv tactics).

- :class:`Quantize`: float16/bfloat16/float32 X -> 8-bit values with a static per-tensor scale, in ONE pass
  over X's memory (any dense layout: channels-last stays channels-last). ONNX QuantizeLinear semantics:
  ``saturate(round_half_even(x / scale) + zero_point)`` (int8/uint8), ``cast_e4m3(clamp(x / scale, +-448))``
  (fp8). The division is correctly rounded (``div_rn``), as torch's is, so the values are bit-identical to
  ``kiln.ops.quantized.quantize``. Outputs: ``"q"`` the 8-bit storage (uint8 data is stored centred,
  q - 128, as int8: what ``torch._int_mm`` takes), or ``"float16"`` the real-zero-centred grid values
  ``q - zero_point`` in float16 (exact: |v| <= 255 and every e4m3 value is a float16 value).
- :func:`dequant_launch`: ``acc * scale[n] + bias[n]``, then the layer's epilogue steps, then the output
  cast or requantization, as ONE generated elementwise kernel. It reuses ``epilogue.epilogue_program`` and the
  elementwise generator (broadcast per-channel vectors, residuals of any layout) with two lines in front.

Under ``TRITON_INTERPRET=1`` the fp8 cast is done on the e4m3 grid in float32 first (the interpreter's own
fp32 -> fp8 conversion rounds wrongly near powers of two); on the GPU it is the hardware cast (RNE, satfinite).
"""
from __future__ import annotations

import torch

from ...ops.quantized import FP8_MAX, RANGES
from . import cache
from ...ops.fused_steps import Instr, inp, tmp
from .codegen import prelude
from .epilogue import EPILOGUE_OPSET, epilogue_program
from .launch import ElementwiseLaunch, block_config, interpreting
from .ops import Unsupported

_ONNX_CODE = {torch.int8: 3, torch.uint8: 2, torch.float16: 10, torch.bfloat16: 16, torch.float32: 1}

# helpers the quantize kernel may use: (GPU body, interpreter body)
_HELPERS = {
    "_div_rn": ("return libdevice.div_rn(x, y)", "return x / y"),
    # x / s correctly rounded from inv = RN(1 / s) (float32): q = RN(x * inv) is within an ulp of x / s, the
    # remainder x - q * s is exact in one FMA, and RN(q + r * inv) is then the correctly rounded quotient
    # (Markstein's theorem; finite x). Three instructions instead of div.rn's call, where the division is on
    # a latency-bound kernel's critical path (the LayerNorm's quantized copy).
    "_div_by": ("q = x * inv\n    return tl.fma(tl.fma(-q, s, x), inv, q)", "return x / s"),
    "_rint": ("return libdevice.rint(x)",
              "f = tl.floor(x)\n    d = x - f\n"
              "    return tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, f + (f - 2.0 * tl.floor(f * 0.5))))"),
    # e4m3: 3 mantissa bits, smallest normal exponent -6 (subnormal spacing 2**-9); RNE onto that grid
    "_e4m3_grid": ("return x",
                   "a = tl.maximum(tl.abs(x), 1e-30)\n"
                   "    e = tl.maximum(tl.floor(tl.log2(a)), -6.0)\n"
                   "    step = tl.exp2(e - 3.0)\n"
                   "    v = x / step\n    f = tl.floor(v)\n    d = v - f\n"
                   "    r = tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, f + (f - 2.0 * tl.floor(f * 0.5))))\n"
                   "    return r * step"),
}
_HELPER_ARGS = {"_div_rn": "x, y", "_div_by": "x, s, inv"}


def quantize_lines(v: str, dtype: str, zero_point: int, interpret: bool, helpers: set[str],
                   by_reciprocal: bool = False) -> tuple[list[str], str]:
    """(lines, expression) quantizing the float32 tensor ``v`` (a name) by the run-time ``scale``: the 8-bit
    values in their storage type (fp8 e4m3, or int8/uint8 in int32). Adds the helpers used to ``helpers``.
    ``by_reciprocal``: the kernel also has ``inv_scale`` (float32 1 / scale) and divides through it."""
    div, args = ("_div_by", "scale, inv_scale") if by_reciprocal else ("_div_rn", "scale")
    lines = [f"v = {div}({v}, {args})"]
    helpers.add(div)
    if dtype == "fp8e4m3":
        lines.append(f"v = tl.minimum(tl.maximum(v, {-FP8_MAX!r}), {FP8_MAX!r})")
        if interpret:
            helpers.add("_e4m3_grid")
            lines.append("v = _e4m3_grid(v)")
        return lines, "v.to(tl.float8e4nv)"
    lo, hi = RANGES[dtype]
    helpers.add("_rint")
    lines.append(f"r = tl.minimum(tl.maximum(_rint(v) + {float(zero_point)!r}, {float(lo)!r}), {float(hi)!r})")
    return lines, "r.to(tl.int32)"


def helper_source(helpers: set[str], interpret: bool) -> list[str]:
    """The quantize helpers' definitions (after codegen.prelude)."""
    out = []
    for name in sorted(helpers):
        gpu, cpu = _HELPERS[name]
        out += ["", "", "@triton.jit", f"def {name}({_HELPER_ARGS.get(name, 'x')}):",
                "    " + (cpu if interpret else gpu)]
    return out


def quantize_source(dtype: str, zero_point: int, out: str, interpret: bool) -> str:
    """Text of ``kernel(x_ptr, out_ptr, N, scale, BLOCK)``: one flat pass, ``out`` "q" or "float16"."""
    lines = ["offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)", "mask = offs < N",
             "x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)"]
    helpers: set[str] = set()
    q_lines, q = quantize_lines("x", dtype, zero_point, interpret, helpers)
    lines += q_lines
    if dtype == "fp8e4m3":
        lines.append(f"tl.store(out_ptr + offs, {q if out == 'q' else q + '.to(tl.float16)'}, mask=mask)")
    elif out == "q":  # uint8 is stored centred (q - 128) as int8
        shift = -128.0 if dtype == "uint8" else 0.0
        lines.append(f"tl.store(out_ptr + offs, (r + {shift!r}).to(tl.int32).to(tl.int8), mask=mask)")
    else:
        lines.append(f"tl.store(out_ptr + offs, (r - {float(zero_point)!r}).to(tl.float16), mask=mask)")
    head = prelude(set(), interpret) + helper_source(helpers, interpret)
    src = head + ["", "", "@triton.jit", "def kiln_quantize(x_ptr, out_ptr, N, scale, BLOCK: tl.constexpr):"]
    return "\n".join(src + ["    " + ln for ln in lines] + ["", "", "kernel = kiln_quantize"]) + "\n"


class Quantize:
    """x -> 8-bit (or float16 grid) values with a static per-tensor scale, one pass over x's memory.

    ``__call__(x, out)`` writes into ``out`` (at least x.numel() elements read in x's memory order, e.g. the
    first M*K elements of an M-padded GEMM operand) and returns it. x must be dense (no gaps)."""

    def __init__(self, scale: float, dtype: str = "int8", zero_point: int = 0, out: str = "q"):
        if dtype not in ("int8", "uint8", "fp8e4m3") or out not in ("q", "float16"):
            raise Unsupported(f"quantize to {dtype} as {out}")
        self.scale, self.dtype, self.zero_point, self.out = float(scale), dtype, int(zero_point), out
        self.out_dtype = torch.float16 if out == "float16" else (
            torch.float8_e4m3fn if dtype == "fp8e4m3" else torch.int8)
        # float32 scale, as torch divides a float32 tensor by a Python float
        self._scale32 = float(torch.tensor(self.scale, dtype=torch.float32))

    def _kernel(self):
        interp = interpreting()
        key = cache.digest("quantize", self.dtype, self.zero_point, self.out, interp)
        return cache.load(key, lambda: quantize_source(self.dtype, self.zero_point, self.out, interp)).kernel

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise Unsupported(f"quantizing {x.dtype}")
        if out.dtype != self.out_dtype or out.numel() < x.numel():
            raise Unsupported(f"out buffer {out.dtype}[{out.numel()}] for {x.numel()} values of {self.out_dtype}")
        n = x.numel()
        if n == 0:
            return out
        block, warps = block_config(n)
        self._kernel()[((n + block - 1) // block,)](x, out, n, self._scale32, BLOCK=block, num_warps=warps)
        return out


# -- dequantize + bias + epilogue (+ requantize) ------------------------------------------------------------
def dequant_program(steps: list[str], has_bias: bool, scaled: bool, requant: tuple | None
                    ) -> tuple[list[Instr], list[dict], list]:
    """(program, attrs, operands) of ``[acc * scale] [+ bias]``, ``steps``, then ``requant``.

    Operands as ``epilogue_program``'s ("y" = the accumulator, "bias", input indices, ("const", v)) plus
    "scale" (a per-channel vector or a 0-d tensor). ``requant`` = (out_scale, zero_point, "int8"|"uint8")."""
    program, attrs, operands = epilogue_program(steps, has_bias)
    head, head_attrs = [], []
    if scaled:
        operands = operands + ["scale"]
        head = [Instr("Cast", (inp(0),)), Instr("Mul", (tmp(0), inp(len(operands) - 1)))]
        head_attrs = [{"to": 1}, {}]

    def remap(arg):  # after the head: the accumulator is its result t1, and the program's own results move
        if not head:
            return arg
        if arg == inp(0):
            return tmp(1)
        return tmp(arg.index + 2) if arg.kind == "t" else arg

    body = [Instr(line.op, tuple(remap(a) for a in line.args)) for line in program]
    program, attrs = head + body, head_attrs + attrs
    if requant is not None:
        scale, zp, dtype = requant
        lo, hi = RANGES[dtype]
        cur = tmp(len(program) - 1) if program else inp(0)
        operands.append(("const", float(scale)))
        program += [Instr("Div", (cur, inp(len(operands) - 1))), Instr("Round", (tmp(len(program)),))]
        attrs += [{}, {}]
        if zp:
            operands.append(("const", float(zp)))
            program.append(Instr("Add", (tmp(len(program) - 1), inp(len(operands) - 1))))
            attrs.append({})
        program += [Instr("Clip", (tmp(len(program) - 1),)), Instr("Cast", (tmp(len(program)),))]
        attrs += [{"min": float(lo), "max": float(hi)}, {"to": _ONNX_CODE[torch.int8 if dtype == "int8" else torch.uint8]}]
    if not program:
        raise Unsupported("nothing to do after the GEMM")
    return program, attrs, operands


_SCALAR = torch.empty(())


class DequantEpilogue:
    """``acc -> acc * scale + bias -> steps -> float out / requantized out`` as one generated kernel.

    ``scale`` is None (the GEMM applied the scales), a 0-d or a per-channel tensor (shaped to broadcast
    against the accumulator, e.g. [O, 1, 1] for NCHW); ``bias`` likewise (float32)."""

    def __init__(self, steps: list[str], scale: torch.Tensor | None, bias: torch.Tensor | None,
                 requant: tuple | None):
        self.scale, self.bias = scale, bias
        program, attrs, self.operands = dequant_program(steps, bias is not None, scale is not None, requant)
        consts = {k: ref[1] for k, ref in enumerate(self.operands) if isinstance(ref, tuple)}
        self.launch = ElementwiseLaunch(program, attrs, EPILOGUE_OPSET, consts)
        self.program = program

    def __call__(self, acc: torch.Tensor, inputs: list, out_dtype: torch.dtype | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        ops = []
        for ref in self.operands:
            if isinstance(ref, tuple):
                ops.append(_SCALAR)
            elif ref == "y":
                ops.append(acc)
            elif ref == "scale":
                ops.append(self.scale)
            elif ref == "bias":
                ops.append(self.bias)
            else:
                ops.append(inputs[ref])
        return self.launch(ops, out, None if out is not None else out_dtype)

