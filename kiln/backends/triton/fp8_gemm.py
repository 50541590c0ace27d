"""An 8-bit GEMM for kiln::QLinear on Hopper, fp8 (e4m3) or int8, with the layer's whole epilogue in the
accumulator tile: ``y = (X8 @ W8^T) * (sx * sw) + bias``, the epilogue steps (GELU, ``add:I`` residuals, ...),
then the store: float16/bfloat16/float32, or requantized to the 8-bit type for the next quantized layer
(``out_scale``). The two types differ only in the accumulator (float32 for e4m3, int32 for int8: wgmma s8) and
in the requantizing conversion (``CODES``); int8 takes symmetric quantization only (zero point 0), which is what
Kiln's calibration makes.

Why not ``torch._scaled_mm``: cuBLASLt fuses only the bias there, so every GELU and residual add costs a pass
of its own over a float16 [M, N] tensor, and a requantized output another; on BERT-base those passes cost as
much as the GEMMs saved (benchmarks/results/2026-11-21-h200-int8.md).

The kernel: persistent (one program per SM walks the output tiles, grouped along M for L2 reuse), operands
and output through tensor descriptors (TMA: the loads zero-fill past the edges and the stores clip, so no
operand is padded), ``tl.dot`` on fp8 operands (wgmma e4m3, float32 accumulator). X and W are both K-major
([M, K] and [N, K], K contiguous), which is what 8-bit wgmma takes. Under ``TRITON_INTERPRET=1`` it is one
program per tile (the interpreter cannot loop over a program-id range) with K a compile-time constant.

The epilogue is arithmetic-bound (it does not overlap the tensor-core work of the next tile), so it is kept
short: the requantizing store multiplies by the float32 reciprocal of the output scale and lets the
saturating conversion clamp, and GELU is ``ops._gelu`` (A&S erf through rcp/ex2.approx, ~20 instructions an
element instead of ~40: BERT-base's FFN1 went from 61-67 to 49 us on the H200). Tried on the H200 and
dropped (slower on every BERT shape, benchmarks/results/2026-11-21-h200-int8.md): quantizing a float16 X in
the tile loads instead of a separate pass, the unflattened tile loop, two programs per SM.

Block configurations (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) are tactic parameters.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import cache
from .codegen import _emit_program, prelude, to_fp8_source
from .epilogue import EPILOGUE_OPSET, epilogue_program
from .launch import interpreting
from .ops import TL_DTYPE, Operand, Unsupported, compute_tl

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages[, programs per SM = 1]): the best of each
# BERT-base / ResNet-50 1x1 shape on the H200 (benchmarks/bench_fp8_gemm.py, benchmarks/bench_fp8_conv.py)
CONFIGS = [
    (128, 128, 128, 8, 8, 4),
    (128, 256, 128, 8, 8, 3),
    (256, 128, 128, 8, 8, 3),
    (128, 256, 64, 8, 8, 4),
    (256, 64, 64, 8, 4, 4),  # N = 64 (ResNet-50 stage 1's 1x1 reductions): 0.087 -> 0.066 ms
    # two programs per SM: one's epilogue overlaps the other's loads where K is one tile (ResNet-50 stage 1's
    # 64 -> 256 expansion: 0.122 -> 0.099 ms)
    (128, 128, 64, 8, 4, 2, 2),
    (256, 64, 64, 8, 4, 2, 2),
]
INTERPRET_CONFIG = (32, 32, 32, 4, 4, 1)
FLOAT_OUT = (torch.float16, torch.bfloat16, torch.float32)
CODES = (torch.float8_e4m3fn, torch.int8)  # the 8-bit operand types these kernels take
_INT8_SOURCE = ["", "", "@triton.jit", "def _to_int8(x):",  # ONNX QuantizeLinear: round half to even, saturate
                "    return tl.minimum(tl.maximum(_rint(x), -128.0), 127.0).to(tl.int8)"]


@dataclass(frozen=True)
class Fp8GemmSpec:
    """Everything the generated source depends on (sizes, scales and pointers are launch arguments)."""
    per_channel: bool             # the dequantizing scale is a [N] vector (else one number)
    bias_dtype: torch.dtype | None
    program: tuple                # the epilogue program (i0 = the dequantized accumulator, i1 = bias, then residuals)
    attrs: tuple
    residual_dtypes: tuple        # float, or ``code`` for an ``addq`` residual (dequantized in the program)
    out_dtype: torch.dtype        # a float type, or ``code`` (requantized)
    persistent: bool
    k_const: int | None           # K as a compile-time constant (the interpreter's loops need it)
    q_out: bool = False           # also store the float result quantized to ``code`` (a second output)
    extras: tuple = ()            # the program's operands after acc/bias: residual j (int) or a constant (float)
    code: torch.dtype = torch.float8_e4m3fn  # the operands' 8-bit type (CODES)


def _epilogue_operands(spec, load) -> tuple[list[str], list[Operand]]:
    """(lines loading the residual tiles, Operands of the program's inputs after acc and bias) for an 8-bit kernel
    ``spec`` (fields residual_dtypes, extras); ``load(j)`` is the expression of residual j's tile. An 8-bit
    residual (an ``addq`` step's 8-bit input) is loaded as float32 codes; the program multiplies by its scale,
    an inlined constant."""
    lines = []
    for j, dt in enumerate(spec.residual_dtypes):
        cvt = ".to(tl.float32)" if dt in CODES else \
            "" if TL_DTYPE[dt] == compute_tl(dt) else f".to({compute_tl(dt)})"
        lines.append(f"e{j} = {load(j)}{cvt}")
    ops = []
    for e in spec.extras:
        if isinstance(e, int):
            dt = spec.residual_dtypes[e]
            ops.append(Operand(f"e{e}", torch.float32 if dt in CODES else dt))
        else:
            ops.append(Operand(repr(float(e)), torch.float32, float(e)))
    return lines, ops


def tile_epilogue(spec, helpers: set, n: str, load, store, interpret: bool) -> tuple[list[str], list[str]]:
    """(lines, helper source) of an 8-bit kernel's epilogue on ``acc`` (dequantized): bias, residuals and the
    program, then the stores: float ``y``, or requantized to ``spec.code`` (multiplied by the float32 reciprocal
    of the scale: the correctly rounded division cost 40% of BERT's FFN1, the epilogue being arithmetic-bound;
    the conversions saturate; for int8 a product within an ulp of a half step may round the other way, which
    the tuner's one-step allowance for requantized outputs covers), plus the 8-bit copy of y as stored with
    ``q_out``. ``n``: the output-channel count's
    name (masks); ``load(j)``: residual j's tile; ``store(desc, value)``: a store line. Needs ``rn``."""
    t, ops = [], [Operand("acc", torch.float32)]
    if spec.bias_dtype:
        t.append(f"bias = tl.load(b_ptr + rn, mask=rn < {n}, other=0.0).to({compute_tl(spec.bias_dtype)})[None, :]")
        ops.append(Operand("bias", spec.bias_dtype))
    lines, extra = _epilogue_operands(spec, load)
    t += lines
    ops += extra
    last = "acc"
    if spec.program:
        lines, _ = _emit_program(spec.program, spec.attrs, EPILOGUE_OPSET, ops, helpers.add)
        t += lines
        last = f"t{len(spec.program) - 1}"
    to_code = "_to_int8" if spec.code == torch.int8 else "_to_fp8"
    if spec.out_dtype in CODES:
        t.append(f"y = {to_code}({last}.to(tl.float32) * inv_out_scale)")
    else:
        t.append(f"y = {last}.to({TL_DTYPE[spec.out_dtype]})")
    t.append(store("out_desc", "y"))
    if spec.q_out:  # quantize(Y as stored), as the reference kernel does
        t += [f"q = {to_code}(y.to(tl.float32) * inv_q_scale)", store("q_desc", "q")]
    if spec.out_dtype not in CODES and not spec.q_out:
        return t, []
    if spec.code == torch.int8:
        helpers.add("_rint")
        return t, _INT8_SOURCE
    if interpret:
        helpers.add("_rint")
    return t, to_fp8_source(interpret)


def extra_operands(operands: list) -> tuple[list[int], tuple]:
    """(layer inputs read as residuals, the spec's ``extras``) from an epilogue program's operand list."""
    residuals = [r for r in operands if isinstance(r, int)]
    extras = tuple(residuals.index(r) if isinstance(r, int) else float(r[1]) for r in operands
                   if r not in ("y", "bias"))
    return residuals, extras


def fp8_gemm_source(spec: Fp8GemmSpec) -> str:
    helpers: set[str] = set()
    res = range(len(spec.residual_dtypes))
    args = ["a_desc", "w_desc", "out_desc"] + (["scale_ptr"] if spec.per_channel else []) + \
        (["b_ptr"] if spec.bias_dtype else []) + [f"r{j}_desc" for j in res] + (["q_desc"] if spec.q_out else []) + \
        ["M", "N", "K: tl.constexpr" if spec.k_const else "K", "scale", "inv_out_scale", "inv_q_scale"] + \
        [f"{n}: tl.constexpr" for n in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "NUM_SMS")]
    body = ["num_m = tl.cdiv(M, BLOCK_M)", "num_n = tl.cdiv(N, BLOCK_N)", "group = GROUP_M * num_n"]
    if spec.persistent:
        body += ["for tile in tl.range(tl.program_id(0), num_m * num_n, NUM_SMS, flatten=True):"]
    else:
        body += ["if True:", "    tile = tl.program_id(0)"]
    t = ["first_m = (tile // group) * GROUP_M", "size_m = tl.minimum(num_m - first_m, GROUP_M)",
         "pid_m = first_m + ((tile % group) % size_m)", "pid_n = (tile % group) // size_m",
         "om = pid_m * BLOCK_M", "on = pid_n * BLOCK_N",
         f"acc = tl.zeros([BLOCK_M, BLOCK_N], dtype={_acc_type(spec.code)})",
         "for k0 in range(0, K, BLOCK_K):",
         "    a = a_desc.load([om, k0])",
         "    w = w_desc.load([on, k0])",
         "    acc = tl.dot(a, w.T, acc)",
         "rn = on + tl.arange(0, BLOCK_N)"] + _float_acc(spec.code)
    if spec.per_channel:
        t.append("acc = acc * tl.load(scale_ptr + rn, mask=rn < N, other=0.0)[None, :]")
    else:
        t.append("acc = acc * scale")
    epi, fp8 = tile_epilogue(spec, helpers, "N", lambda j: f"r{j}_desc.load([om, on])",
                             lambda desc, v: f"{desc}.store([om, on], {v})", spec.k_const is not None)
    body += ["    " + ln for ln in t + epi]
    src = prelude(helpers, spec.k_const is not None) + fp8 + ["", "", "@triton.jit",
                                                               f"def kiln_fp8_gemm({', '.join(args)}):"]
    return "\n".join(src + ["    " + ln for ln in body] + ["", "", "kernel = kiln_fp8_gemm"]) + "\n"


def _acc_type(code: torch.dtype) -> str:
    """The accumulator of an 8-bit wgmma: int32 for int8 (exact), float32 for e4m3."""
    return "tl.int32" if code == torch.int8 else "tl.float32"


def _float_acc(code: torch.dtype) -> list[str]:
    """The line that turns an integer accumulator into float32 before the scales (none for fp8's)."""
    return ["acc = acc.to(tl.float32)"] if code == torch.int8 else []


def _reciprocal(scale: float | None) -> float:
    """The float32 reciprocal of a quantization scale (what the stores multiply by), 1.0 for None."""
    return 1.0 if scale is None else float(1.0 / torch.tensor(scale, dtype=torch.float32))


def _descriptor(t: torch.Tensor, block: list[int]):
    from triton.tools.tensor_descriptor import TensorDescriptor
    return TensorDescriptor.from_tensor(t, block)


@functools.lru_cache(maxsize=None)
def _device_limits(index: int) -> tuple[int, int]:
    """(streaming multiprocessors, shared memory one block may use) of CUDA device ``index``."""
    props = torch.cuda.get_device_properties(index)
    return props.multi_processor_count, int(getattr(props, "shared_memory_per_block_optin", 232448))


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _tma_ok(t: torch.Tensor) -> bool:
    """A 2-d operand TMA takes: unit inner stride, 16-byte aligned base and row stride."""
    return t.dim() == 2 and t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 \
        and t.data_ptr() % 16 == 0


class Fp8GemmLaunch:
    """``x8 [M, K] @ w8 [N, K]^T`` then the epilogue, into a new [M, N] tensor; both operands of one 8-bit type
    (``CODES``: float8_e4m3fn or int8, the weight's)."""

    def __init__(self, w8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, steps: list[str],
                 out_scale: float | None, config: tuple, q_scale: float | None = None):
        if w8.dtype not in CODES or w8.dim() != 2:
            raise Unsupported(f"an 8-bit GEMM weight of {w8.dtype}{list(w8.shape)}")
        self.code = w8.dtype
        self.n, self.k = w8.shape
        if self.k % 16 or self.n % 8:
            raise Unsupported(f"K={self.k} must be a multiple of 16 and N={self.n} of 8 (TMA's 16-byte rows)")
        if (out_scale is not None or q_scale is not None) and self.n % 16:
            raise Unsupported(f"N={self.n} must be a multiple of 16 for an 8-bit output (TMA's 16-byte rows)")
        if out_scale is not None and q_scale is not None:
            raise Unsupported("a requantized output and a second quantized copy")
        self.w8 = w8.contiguous()
        self.scale = scale.reshape(-1).to(torch.float32).contiguous()
        if self.scale.numel() not in (1, self.n):
            raise Unsupported(f"{self.scale.numel()} scales for N={self.n}")
        self.bias = None if bias is None else bias.reshape(-1).contiguous()
        self.steps = list(steps)
        program, eattrs, self.operands = epilogue_program(self.steps, bias is not None)
        self.program = tuple(program)
        self.eattrs = tuple(tuple(sorted(a.items())) for a in eattrs)
        self.residuals, self.extras = extra_operands(self.operands)
        self.out_scale = out_scale
        self._inv_out_scale = _reciprocal(out_scale)
        self.q_scale = q_scale
        self._inv_q_scale = _reciprocal(q_scale)
        self.config = tuple(int(v) for v in config)
        if len(self.config) not in (6, 7):
            raise Unsupported(f"config {self.config}: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages"
                              "[, programs per SM])")
        self.per_sm = self.config[6] if len(self.config) == 7 else 1
        self._scale_value = float(self.scale[0]) if self.scale.numel() == 1 else 1.0
        self._w_desc = None

    def check_fits(self, out_bytes: int, residual_bytes: list[int], device: torch.device) -> None:
        """Unsupported when the config's shared memory (the pipeline's operand tiles, plus the output and
        residual tiles TMA stages) exceeds what one block may use on ``device``."""
        bm, bn, bk, _, _, stages = self.config[:6]
        out_bytes += 1 if self.q_scale is not None else 0
        smem = stages * (bm + bn) * bk + bm * bn * (out_bytes + sum(residual_bytes))
        limit = _device_limits(_index(device))[1] // self.per_sm
        if smem > limit:
            raise Unsupported(f"config {self.config} needs ~{smem} bytes of shared memory, the GPU has {limit}")

    @property
    def name(self) -> str:
        epi = "+".join((["bias"] if self.bias is not None else []) + self.steps) or "none"
        kind = "s8" if self.code == torch.int8 else "fp8"
        return f"triton_{kind}_gemm[{epi}{',requant' if self.out_scale is not None else ''}" \
               f"{f',+{kind} copy' if self.q_scale is not None else ''}]"

    def __call__(self, x8: torch.Tensor, residuals: list[torch.Tensor], out_dtype: torch.dtype):
        """[M, N] of ``out_dtype``; with ``q_scale`` the pair (that, its 8-bit copy)."""
        m = x8.shape[0]
        if x8.dtype != self.code or x8.dim() != 2 or x8.shape[1] != self.k or not _tma_ok(x8):
            raise Unsupported(f"an X operand {x8.dtype}{list(x8.shape)} with strides {x8.stride()} ({self.code})")
        if out_dtype not in FLOAT_OUT and out_dtype != self.code:
            raise Unsupported(f"an output of {out_dtype}")
        if self.q_scale is not None and out_dtype == self.code:
            raise Unsupported("an 8-bit output with a second 8-bit copy")
        out = torch.empty((m, self.n), dtype=out_dtype, device=x8.device)
        q = None if self.q_scale is None else torch.empty((m, self.n), dtype=self.code, device=x8.device)
        if m == 0:
            return out if q is None else (out, q)
        res2 = []
        for r in residuals:
            r2 = r.reshape(m, self.n) if r.is_contiguous() else None
            if r2 is None or not _tma_ok(r2) or r2.dtype not in FLOAT_OUT + (self.code,):
                raise Unsupported(f"a residual {r.dtype}{list(r.shape)} with strides {r.stride()} (TMA wants "
                                  "contiguous rows)")
            res2.append(r2)
        interp = interpreting()
        bm, bn, bk, gm, warps, stages = INTERPRET_CONFIG if interp else self.config[:6]
        if not interp:
            self.check_fits(out.element_size(), [r.element_size() for r in res2], x8.device)
        spec = Fp8GemmSpec(self.scale.numel() > 1, None if self.bias is None else self.bias.dtype, self.program,
                           self.eattrs, tuple(r.dtype for r in res2), out_dtype, not interp,
                           self.k if interp else None, q is not None, self.extras, self.code)
        mod = cache.load(cache.digest("fp8_gemm", spec), lambda: fp8_gemm_source(spec))
        if self._w_desc is None or self._w_desc[0] != (bn, bk):
            self._w_desc = ((bn, bk), _descriptor(self.w8, [bn, bk]))
        tiles = -(-m // bm) * -(-self.n // bn)
        sms = tiles if interp else _device_limits(_index(x8.device))[0] * self.per_sm  # persistent programs
        grid = (tiles if interp else min(sms, tiles),)
        extra = ([self.scale] if spec.per_channel else []) + ([self.bias] if self.bias is not None else [])
        mod.kernel[grid](_descriptor(x8, [bm, bk]), self._w_desc[1], _descriptor(out, [bm, bn]), *extra,
                         *[_descriptor(r, [bm, bn]) for r in res2],
                         *([_descriptor(q, [bm, bn])] if q is not None else []),
                         m, self.n, self.k, self._scale_value, self._inv_out_scale, self._inv_q_scale,
                         BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, NUM_SMS=sms,
                         num_warps=warps, num_stages=stages)
        return out if q is None else (out, q)
