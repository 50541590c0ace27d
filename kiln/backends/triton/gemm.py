"""A Triton GEMM template for kiln::Linear (y = x @ W^T + b, then the epilogue) with the epilogue fused into
the accumulator tile: one kernel, the output written once (into a slice of a larger tensor when asked).

Block sizes (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) are tactic parameters: ``CONFIGS``
lists the candidates a tuner may time; ``GemmLaunch(config=...)`` pins one. Accumulation is float32
(``tl.dot``; Hopper's wgmma for fp16/bf16 operands). Residual operands (``add:I``/``mul:I``) must have the
output's [M, N] shape (any strides); others send the call back to the library path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import cache
from .codegen import _emit_program, prelude, program_types
from .epilogue import EPILOGUE_OPSET
from .launch import interpreting
from .ops import TL_DTYPE, Operand, Unsupported, compute_tl

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)
CONFIGS = [
    (128, 128, 64, 8, 8, 3),
    (128, 256, 64, 8, 8, 3),
    (64, 128, 64, 8, 4, 4),
    (128, 64, 64, 8, 4, 4),
    (64, 64, 64, 8, 4, 4),
]
INTERPRET_CONFIG = (32, 32, 32, 4, 4, 1)


@dataclass(frozen=True)
class GemmSpec:
    x_dtype: torch.dtype
    w_dtype: torch.dtype
    bias_dtype: torch.dtype | None
    program: tuple  # the epilogue program (operand i0 = the accumulator, i1 = the bias if any, then residuals)
    attrs: tuple
    extra_dtypes: tuple  # per operand after y and bias: a residual's dtype, or ("const", value) for a scale
    out_dtype: torch.dtype
    int64: bool


def gemm_source(spec: GemmSpec, interpret: bool) -> str:
    helpers: set[str] = set()
    res = [j for j, dt in enumerate(spec.extra_dtypes) if not isinstance(dt, tuple)]
    args = ["out_ptr", "x_ptr", "w_ptr"] + (["b_ptr"] if spec.bias_dtype else []) + \
        [f"r{j}_ptr" for j in res] + \
        ["M", "N", "K: tl.constexpr" if interpret else "K", "sxm", "sxk", "swn", "swk", "som", "son"] + \
        [f"r{j}_s{d}" for j in res for d in (0, 1)] + \
        ["BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr", "BLOCK_K: tl.constexpr", "GROUP_M: tl.constexpr"]
    pid = "tl.program_id(0)"
    b = [f"pid = {pid}",
         "num_m = tl.cdiv(M, BLOCK_M)", "num_n = tl.cdiv(N, BLOCK_N)",
         "group = GROUP_M * num_n", "first_m = (pid // group) * GROUP_M",
         "size_m = tl.minimum(num_m - first_m, GROUP_M)",
         "pid_m = first_m + ((pid % group) % size_m)", "pid_n = (pid % group) // size_m",
         "rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)", "rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)",
         "rk = tl.arange(0, BLOCK_K)"]
    if spec.int64:
        b += ["rm = rm.to(tl.int64)", "rn = rn.to(tl.int64)"]
    b += ["xp = x_ptr + rm[:, None] * sxm + rk[None, :] * sxk",
          "wp = w_ptr + rn[None, :] * swn + rk[:, None] * swk",
          "acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)",
          "for k0 in range(0, K, BLOCK_K):",
          "    a = tl.load(xp, mask=(rm[:, None] < M) & (rk[None, :] + k0 < K), other=0.0)",
          "    bt = tl.load(wp, mask=(rn[None, :] < N) & (rk[:, None] + k0 < K), other=0.0)",
          # the interpreter's bf16 dot misreads its operands: it multiplies in float32 instead
          "    acc = tl.dot(a.to(tl.float32), bt.to(tl.float32), acc)" if interpret else "    acc = tl.dot(a, bt, acc)",
          "    xp += BLOCK_K * sxk",
          "    wp += BLOCK_K * swk",
          "mask = (rm[:, None] < M) & (rn[None, :] < N)"]
    ops = [Operand("acc", spec.x_dtype)]
    if spec.bias_dtype:
        b.append(f"bias = tl.load(b_ptr + rn, mask=rn < N, other=0.0).to({compute_tl(spec.bias_dtype)})[None, :]")
        ops.append(Operand("bias", spec.bias_dtype))
    for j, dt in enumerate(spec.extra_dtypes):
        if isinstance(dt, tuple):
            b.append(f"e{j} = tl.full([], {float(dt[1])!r}, tl.float32)")
            ops.append(Operand(f"e{j}", torch.float32, dt[1]))
            continue
        cvt = "" if TL_DTYPE[dt] == compute_tl(dt) else f".to({compute_tl(dt)})"
        b.append(f"e{j} = tl.load(r{j}_ptr + rm[:, None] * r{j}_s0 + rn[None, :] * r{j}_s1, mask=mask){cvt}")
        ops.append(Operand(f"e{j}", dt))
    if spec.program:
        lines, _ = _emit_program(spec.program, spec.attrs, EPILOGUE_OPSET, ops, helpers.add)
        b += lines
        last = f"t{len(spec.program) - 1}"
    else:
        last = "acc"
    b.append(f"tl.store(out_ptr + rm[:, None] * som + rn[None, :] * son, {last}.to({TL_DTYPE[spec.out_dtype]}), "
             f"mask=mask)")
    src = prelude(helpers, interpret) + ["", "", "@triton.jit", f"def kernel({', '.join(args)}):"] + \
        ["    " + ln for ln in b]
    return "\n".join(src) + "\n"


class GemmLaunch:
    """x[..., K] @ w[N, K]^T (+ bias) then the epilogue program, in one generated kernel."""

    def __init__(self, program, attrs, has_bias: bool, config: tuple | None = None):
        self.program = tuple(program)
        self.attrs = tuple(tuple(sorted(a.items())) for a in attrs)
        self.has_bias = has_bias
        self.config = config

    def __call__(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, extras: list,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16) or w.dtype != x.dtype or w.dim() != 2:
            # float32 would run tl.dot in tf32: less precise than the library's float32 GEMM
            raise Unsupported(f"GEMM of {x.dtype} x {w.dtype} (the template takes fp16/bf16)")
        if x.dim() < 2:
            raise Unsupported("a 1-d GEMM input")
        K, N = x.shape[-1], w.shape[0]
        if w.shape[1] != K:
            raise Unsupported("shapes do not match")
        lead = tuple(x.shape[:-1])
        x2 = x.reshape(-1, K)
        M = x2.shape[0]
        shape = lead + (N,)
        ex2, kinds = [], []
        for e in extras:
            if isinstance(e, tuple):
                kinds.append(e)
                continue
            kinds.append(e.dtype)
            if tuple(e.shape) != shape or e.device != x.device:
                raise Unsupported(f"a residual of shape {list(e.shape)} for an output of {list(shape)}")
            e2 = e.reshape(M, N) if e.is_contiguous() or e.dim() == 2 else None
            if e2 is None:
                raise Unsupported("a non-contiguous residual with more than 2 dims")
            ex2.append(e2)
        opsig = [x.dtype] + ([bias.dtype] if bias is not None else []) + \
            [torch.float32 if isinstance(k, tuple) else k for k in kinds]
        dtype = program_types(self.program, self.attrs, EPILOGUE_OPSET, opsig) if self.program else x.dtype
        result = torch.empty(shape, dtype=dtype, device=x.device) if out is None else out
        if out is not None and tuple(out.shape) != shape:
            raise Unsupported("out has another shape")
        o2 = result.view(M, N) if result.is_contiguous() else (result if result.dim() == 2 else None)
        if o2 is None:
            raise Unsupported("a strided output with more than 2 dims")
        if M == 0 or N == 0:
            return result
        int64 = max(x2.numel(), w.numel(), M * max(o2.stride(0), 1) + N) >= 2 ** 31 - 1
        spec = GemmSpec(x.dtype, w.dtype, bias.dtype if bias is not None else None, self.program, self.attrs,
                        tuple(kinds), result.dtype, int64)
        interp = interpreting()
        mod = cache.load(cache.digest("gemm", spec, interp), lambda: gemm_source(spec, interp))
        bm, bn, bk, gm, warps, stages = self.config or (INTERPRET_CONFIG if interp else CONFIGS[0])
        grid = (((M + bm - 1) // bm) * ((N + bn - 1) // bn),)
        strides = [s for e in ex2 for s in e.stride()]
        mod.kernel[grid](o2, x2, w, *([bias] if bias is not None else []), *ex2, M, N, K, x2.stride(0), x2.stride(1),
                         w.stride(0), w.stride(1), o2.stride(0), o2.stride(1), *strides,
                         BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=warps, num_stages=stages)
        return result
