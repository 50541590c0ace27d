"""Row reductions as generated kernels: Softmax, LayerNormalization and RMSNormalization over the trailing
dims, accumulated in float32 (float64 for float64 inputs) whatever the input type.

The input is viewed as [rows, cols] (cols = the product of the normalized dims, contiguous); each program
takes a tile of ROWS rows. A row that fits one block (cols <= MAX_COLS) is read once; a longer row is
walked in chunks: two passes for Softmax (online max and sum, then the write) and RMSNorm, three for
LayerNorm (mean, then the centred variance, then the write), so a long row never loses precision to
sum-of-squares cancellation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import cache
from .codegen import prelude
from .launch import interpreting
from .ops import TL_DTYPE, Unsupported, compute_tl
from .quant import helper_source, quantize_lines

KINDS = ("softmax", "layernorm", "rmsnorm", "sum", "mean", "sumsquare", "max", "min")
REDUCTIONS = ("sum", "mean", "sumsquare", "max", "min")  # one value per row (ReduceSum, ReduceMean, ...)
MAX_COLS = 16384  # the widest row read as one block on the GPU
INTERPRET_MAX_COLS = 1 << 16  # the same under TRITON_INTERPRET=1 (tests lower it to reach the looped kernels)


@dataclass(frozen=True)
class RowSpec:
    kind: str
    x_dtype: torch.dtype
    w_dtype: torch.dtype | None
    b_dtype: torch.dtype | None
    out_dtype: torch.dtype
    looped: bool
    int64: bool
    q_dtype: str | None = None  # layernorm: Y also written quantized ("fp8e4m3" | "int8") by ``scale``
    q_zero_point: int = 0


def row_source(spec: RowSpec, interpret: bool) -> str:
    ct = compute_tl(spec.x_dtype)
    has_w, has_b = spec.w_dtype is not None, spec.b_dtype is not None
    q = spec.q_dtype is not None
    args = ["out_ptr", "x_ptr"] + (["w_ptr"] if has_w else []) + (["b_ptr"] if has_b else []) + \
        (["q_ptr", "scale", "inv_scale"] if q else []) + \
        ["M", "N: tl.constexpr" if spec.looped and interpret else "N", "x_stride", "out_stride", "eps",
         "ROWS: tl.constexpr", "BLOCK: tl.constexpr"]
    # (the interpreter cannot take a run-time loop bound with numpy >= 2.4: the row length is a constant there)
    pid = "tl.program_id(0).to(tl.int64)" if spec.int64 else "tl.program_id(0)"
    b = [f"rows = {pid} * ROWS + tl.arange(0, ROWS)[:, None]",
         "rmask = rows < M",
         "xrow = x_ptr + tl.minimum(rows, M - 1) * x_stride",  # tail rows re-read the last row: no NaN
         "orow = out_ptr + rows * out_stride"] + (["qrow = q_ptr + rows * N"] if q else [])
    w_load = f"tl.load(w_ptr + cols, mask=cmask, other=0.0).to({ct})"
    b_load = f"tl.load(b_ptr + cols, mask=cmask, other=0.0).to({ct})"

    def affine(y: str) -> list[str]:
        out = []
        if has_w:
            out.append(f"{y} = {y} * {w_load}")
        if has_b:
            out.append(f"{y} = {y} + {b_load}")
        return out

    store = [f"tl.store(orow + cols, y.to({TL_DTYPE[spec.out_dtype]}), mask=m)"]
    helpers: set[str] = set()
    if q:  # the quantized copy of Y as stored (rounded to its type first), as QuantizeLinear of Y gives
        q_lines, q_expr = quantize_lines("yq", spec.q_dtype, spec.q_zero_point, interpret, helpers, True)
        store += [f"yq = y.to({TL_DTYPE[spec.out_dtype]}).to(tl.float32)"] + q_lines + \
            [f"tl.store(qrow + cols, {q_expr}.to({'tl.float8e4nv' if spec.q_dtype == 'fp8e4m3' else 'tl.int8'}), "
             "mask=m)"]
    if spec.kind in REDUCTIONS:
        b += _reduction_lines(spec, ct)
    elif not spec.looped:
        b += ["cols = tl.arange(0, BLOCK)[None, :]", "cmask = cols < N", "m = rmask & cmask"]
        if spec.kind == "softmax":
            b += [f"x = tl.load(xrow + cols, mask=cmask, other=-float('inf')).to({ct})",
                  "mx = tl.max(x, axis=1)[:, None]",
                  "e = tl.where(m, tl.exp(x - mx), 0.0)",
                  "y = e / tl.sum(e, axis=1)[:, None]"]
        elif spec.kind == "layernorm":
            b += [f"x = tl.load(xrow + cols, mask=cmask, other=0.0).to({ct})",
                  "mean = tl.sum(x, axis=1)[:, None] / N",
                  "d = tl.where(m, x - mean, 0.0)",
                  "rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1)[:, None] / N + eps)",
                  "y = d * rstd"] + affine("y")
        else:
            b += [f"x = tl.load(xrow + cols, mask=cmask, other=0.0).to({ct})",
                  "rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1)[:, None] / N + eps)",
                  "y = x * rstd"] + affine("y")
        b += store
    else:
        chunk = ["cols = c0 + tl.arange(0, BLOCK)[None, :]", "cmask = cols < N", "m = rmask & cmask"]
        if spec.kind == "softmax":
            b += [f"mx = tl.full([ROWS, BLOCK], -float('inf'), {ct})", f"s = tl.zeros([ROWS, BLOCK], {ct})",
                  "for c0 in range(0, N, BLOCK):"] + ["    " + ln for ln in chunk + [
                      f"x = tl.load(xrow + cols, mask=cmask, other=-float('inf')).to({ct})",
                      "nm = tl.maximum(mx, x)",
                      "s = s * tl.where(nm == mx, 1.0, tl.exp(mx - nm)) + tl.where(m, tl.exp(x - nm), 0.0)",
                      "mx = nm"]] + [
                  "rm = tl.max(mx, axis=1)[:, None]",
                  "tot = tl.sum(s * tl.where(mx == rm, 1.0, tl.exp(mx - rm)), axis=1)[:, None]",
                  "for c0 in range(0, N, BLOCK):"] + ["    " + ln for ln in chunk + [
                      f"x = tl.load(xrow + cols, mask=cmask, other=-float('inf')).to({ct})",
                      "y = tl.exp(x - rm) / tot"] + store]
        else:
            if spec.kind == "layernorm":
                b += [f"acc = tl.zeros([ROWS, BLOCK], {ct})", "for c0 in range(0, N, BLOCK):"] + \
                    ["    " + ln for ln in chunk + [f"acc += tl.load(xrow + cols, mask=cmask, other=0.0).to({ct})"]] + \
                    ["mean = tl.sum(acc, axis=1)[:, None] / N", f"acc = tl.zeros([ROWS, BLOCK], {ct})",
                     "for c0 in range(0, N, BLOCK):"] + \
                    ["    " + ln for ln in chunk + [f"x = tl.load(xrow + cols, mask=cmask, other=0.0).to({ct})",
                                                    "d = tl.where(m, x - mean, 0.0)", "acc += d * d"]]
                centre = "x - mean"
            else:
                b += [f"acc = tl.zeros([ROWS, BLOCK], {ct})", "for c0 in range(0, N, BLOCK):"] + \
                    ["    " + ln for ln in chunk + [f"x = tl.load(xrow + cols, mask=cmask, other=0.0).to({ct})",
                                                    "acc += x * x"]]
                centre = "x"
            b += ["rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=1)[:, None] / N + eps)", "for c0 in range(0, N, BLOCK):"]
            b += ["    " + ln for ln in chunk + [f"x = tl.load(xrow + cols, mask=cmask, other=0.0).to({ct})",
                                                f"y = ({centre}) * rstd"] + affine("y") + store]
    src = prelude(set(), interpret) + helper_source(helpers, interpret) + \
        ["", "", "@triton.jit", f"def kernel({', '.join(args)}):"] + ["    " + ln for ln in b]
    return "\n".join(src) + "\n"


def _reduction_lines(spec: RowSpec, ct: str) -> list[str]:
    """sum / mean / sum of squares / max / min of each row, stored at out_ptr + row."""
    ext = spec.kind in ("max", "min")
    other = ("-float('inf')" if spec.kind == "max" else "float('inf')") if ext else "0.0"
    term = "x * x" if spec.kind == "sumsquare" else "x"
    red = {"max": "tl.max", "min": "tl.min"}.get(spec.kind, "tl.sum")
    load = f"x = tl.load(xrow + cols, mask=cmask, other={other}).to({ct})"
    if not spec.looped:
        b = ["cols = tl.arange(0, BLOCK)[None, :]", "cmask = cols < N", load, f"v = {red}({term}, axis=1)"]
    else:
        fold = {"max": "acc = tl.maximum(acc, x)", "min": "acc = tl.minimum(acc, x)"}.get(spec.kind, f"acc += {term}")
        b = [f"acc = tl.full([ROWS, BLOCK], {other}, {ct})", "for c0 in range(0, N, BLOCK):",
             "    cols = c0 + tl.arange(0, BLOCK)[None, :]", "    cmask = cols < N", "    " + load, "    " + fold,
             f"v = {red}(acc, axis=1)"]
    if spec.kind == "mean":
        b.append("v = v / N")
    b.append(f"tl.store(out_ptr + rows * out_stride, v[:, None].to({TL_DTYPE[spec.out_dtype]}), mask=rmask)")
    return b


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


class RowLaunch:
    """Runs one row kernel kind; ``axis`` is where the normalized trailing dims start. ``quantize`` =
    (scale, zero_point, "fp8e4m3" | "int8"), layernorm only: the call returns (Y, Y quantized)."""

    def __init__(self, kind: str, eps: float = 0.0, quantize: tuple | None = None):
        if kind not in KINDS:
            raise ValueError(kind)
        if quantize is not None and (kind != "layernorm" or quantize[2] not in ("fp8e4m3", "int8")):
            raise Unsupported(f"{kind} writing a {quantize[2]} copy")
        self.kind, self.eps, self.quantize = kind, float(eps), quantize
        # float32 scale, as torch divides a float32 tensor by a Python float
        if quantize is not None:
            s32 = torch.tensor(float(quantize[0]), dtype=torch.float32)
            self._q_scale, self._q_inv = float(s32), float(1.0 / s32)  # the reciprocal correctly rounded

    def __call__(self, x: torch.Tensor, axis: int, w: torch.Tensor | None = None, b: torch.Tensor | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise Unsupported(f"{self.kind} on {x.dtype}")
        shape = tuple(x.shape)
        axis = axis % max(x.dim(), 1)
        n = 1
        for d in shape[axis:]:
            n *= d
        rows = x.numel() // n if n else 0
        for t in (w, b):
            if t is not None and (t.numel() != n or t.device != x.device):
                raise Unsupported(f"scale/bias of shape {list(t.shape)} for rows of {n}")
        w = None if w is None else w.reshape(n).contiguous()
        b = None if b is None else b.reshape(n).contiguous()
        x2 = x.reshape(rows, n)
        if n > 1 and x2.stride(1) != 1:
            x2 = x2.contiguous()
        if self.kind in REDUCTIONS:  # one value per row, in the [rows] prefix shape (keepdims: the layer's view)
            result = torch.empty(shape[:axis], dtype=x.dtype, device=x.device) if out is None else out
            if result.numel() != rows:
                raise Unsupported("out does not hold one value per row")
            o2 = result.reshape(rows, 1) if result.is_contiguous() else None
            if o2 is None:
                raise Unsupported("a strided reduction output")
        else:
            result = torch.empty(shape, dtype=x.dtype, device=x.device) if out is None else out
            o2 = result.view(rows, n) if out is None else out.reshape(rows, n) if out.is_contiguous() else out
            if o2.dim() != 2 or (n > 1 and o2.stride(1) != 1):
                raise Unsupported("the output's rows must be contiguous")
        if n == 0 and self.kind in REDUCTIONS:
            raise Unsupported("a reduction over no elements")
        qt = None
        if self.quantize is not None:
            qt = torch.empty(shape, dtype=torch.float8_e4m3fn if self.quantize[2] == "fp8e4m3" else torch.int8,
                             device=x.device)
        if rows == 0 or n == 0:
            return result if qt is None else (result, qt)
        limit = INTERPRET_MAX_COLS if interpreting() else MAX_COLS
        looped = n > limit
        block = min(_pow2(n), 4096 if looped and not interpreting() else limit)
        if interpreting():
            nrows = max(1, min(_pow2(rows), (1 << 15) // block))
            warps = 4
        else:
            nrows = 1 if block >= 1024 else min(_pow2(rows), max(1, 2048 // block))
            if self.kind == "layernorm" and block == 1024:  # two rows of 4 warps (H200, bench_rows.py: [8192,
                nrows = min(_pow2(rows), 2)                 # 768] fp16 6.9 us, one row 8.2 us)
            warps = 4 if block * nrows <= 2048 else 8 if block * nrows <= 8192 else 16
        int64 = max(rows * x2.stride(0), rows * o2.stride(0), x.numel()) >= 2 ** 31 - 1
        spec = RowSpec(self.kind, x.dtype, None if w is None else w.dtype, None if b is None else b.dtype,
                       result.dtype, looped, int64, None if qt is None else self.quantize[2],
                       0 if qt is None else int(self.quantize[1]))
        interp = interpreting()
        mod = cache.load(cache.digest("rows", spec, interp), lambda: row_source(spec, interp))
        grid = ((rows + nrows - 1) // nrows,)
        q_args = [] if qt is None else [qt, self._q_scale, self._q_inv]
        mod.kernel[grid](o2, x2, *[t for t in (w, b) if t is not None], *q_args, rows, n, x2.stride(0),
                         o2.stride(0), self.eps, ROWS=nrows, BLOCK=block, num_warps=warps)
        return result if qt is None else (result, qt)
