"""Launching generated elementwise kernels: broadcast strides, dimension collapsing, the launch plan.

A call's operands are viewed in the output's shape (stride 0 where they broadcast); dimensions that are
contiguous for every operand (and the output) are merged, size-1 dimensions dropped. When every operand
then reads like the output, the kernel indexes linearly (the contiguous fast path); otherwise it decomposes
the linear index into coordinates once and each strided operand dots them with its strides. The plan for a
given set of shapes, strides and dtypes is computed once and kept.
"""
from __future__ import annotations

import torch

from . import cache
from .codegen import ElementwiseSpec, elementwise_source
from .ops import TL_DTYPE, Unsupported

MAX_RANK = 8


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (numpy, on CPU tensors) rather than compiling them: Triton's
    own switch (``TRITON_INTERPRET=1``, which Triton reads when ``@triton.jit`` decorates a kernel), asked of
    Triton itself; Kiln neither reads nor sets the variable."""
    import triton
    knobs = getattr(triton, "knobs", None)  # Triton 3.4+
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return _jit_is_interpreted()


def _probe():  # decorated by _jit_is_interpreted (its body is never run)
    pass


def _jit_is_interpreted() -> bool:
    """Triton before 3.4: whether ``@triton.jit`` makes an interpreted function now."""
    import triton
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(triton.jit(_probe), InterpretedFunction)


def block_config(n: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for an elementwise launch over ``n`` elements."""
    if interpreting():  # numpy runs each program: few large programs are fastest
        return max(16, min(1 << max(n - 1, 1).bit_length(), 1 << 14)), 4
    if n >= 1 << 22:
        return 2048, 8
    return 1024, 4


def broadcast_strides(t: torch.Tensor, shape: tuple) -> list[int]:
    """``t``'s strides viewed in ``shape`` (numpy broadcasting): 0 on broadcast dims."""
    lead = len(shape) - t.dim()
    out = [0] * lead
    for d in range(t.dim()):
        out.append(0 if t.shape[d] == 1 and shape[lead + d] != 1 else t.stride(d))
    return out


def collapse(shape: tuple, strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims, then merge neighbours that are contiguous in every stride list."""
    keep = [d for d in range(len(shape)) if shape[d] != 1]
    sh = [shape[d] for d in keep]
    st = [[s[d] for d in keep] for s in strides]
    if not sh:
        return [1], [[0] for _ in strides]
    out_sh, out_st = [sh[0]], [[s[0]] for s in st]
    for d in range(1, len(sh)):
        if all(o[-1] == s[d] * sh[d] for o, s in zip(out_st, st)):
            out_sh[-1] *= sh[d]
            for o, s in zip(out_st, st):
                o[-1] = s[d]
        else:
            out_sh.append(sh[d])
            for o, s in zip(out_st, st):
                o.append(s[d])
    return out_sh, out_st


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t`` covers its storage span exactly (contiguous in some dim order, e.g. channels-last)."""
    dims = sorted((d for d in range(t.dim()) if t.shape[d] != 1), key=lambda d: t.stride(d))
    expect = 1
    for d in dims:
        if t.stride(d) != expect:
            return False
        expect *= t.shape[d]
    return True


def contiguous_strides(shape: list[int]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


class ElementwiseLaunch:
    """Runs one description (program, attrs, opset, inlined constants) over any operand shapes and dtypes."""

    def __init__(self, program, attrs, opset: int, consts: dict[int, float] | None = None,
                 config: tuple[int, int] | None = None):
        self.config = config  # (BLOCK, num_warps): a tactic parameter; None picks by size
        self.program = tuple(program)
        self.attrs = tuple(tuple(sorted(a.items())) for a in attrs)
        self.opset = int(opset)
        self.consts = dict(consts or {})
        self._plans: dict[tuple, tuple] = {}

    def __call__(self, inputs: list, out: torch.Tensor | None = None, out_dtype: torch.dtype | None = None):
        key = (tuple((tuple(x.shape), x.stride(), x.dtype, x.device) for x in inputs),
               None if out is None else (tuple(out.shape), out.stride(), out.dtype), out_dtype)
        plan = self._plans.get(key)
        if plan is None:
            try:
                plan = self._plan(inputs, out, out_dtype)
            except Unsupported as e:
                plan = e
            self._plans[key] = plan
        if isinstance(plan, Unsupported):
            raise plan
        kernel, shape, strides, dtype, n, scalars, grid, block, warps, slots = plan
        if out is None:
            out = torch.empty_strided(shape, strides, dtype=dtype, device=inputs[slots[0]].device)
        if n == 0:
            return out
        kernel[grid](out, *[inputs[k] for k in slots], *scalars, BLOCK=block, num_warps=warps)
        return out

    def _plan(self, inputs: list, out: torch.Tensor | None, out_dtype):
        shape = tuple(torch.broadcast_shapes(*[tuple(x.shape) for x in inputs]))
        if out is not None and tuple(out.shape) != shape:
            raise Unsupported(f"out has shape {list(out.shape)}, the region computes {list(shape)}")
        live = [k for k in range(len(inputs)) if k not in self.consts]
        devices = {inputs[k].device for k in live}
        if len(devices) != 1 or (out is not None and out.device not in devices):
            raise Unsupported(f"operands on several devices ({', '.join(sorted(map(str, devices)))})")
        if out is not None:
            out_dtype = out.dtype  # the store converts to the buffer's type
        dtypes = tuple(x.dtype for x in inputs)
        for dt in dtypes:
            if dt not in TL_DTYPE:
                raise Unsupported(f"dtype {dt} is not generated")
        n = 1
        for d in shape:
            n *= d
        # layouts: scalars and constants need no strides; the rest are collapsed together with the output
        strided_ops = [k for k in live if inputs[k].numel() != 1]
        if out is not None:
            out_strides = list(out.stride())
        else:  # like torch: the layout of the first dense full-shape operand (channels-last stays channels-last)
            like = next((inputs[k] for k in strided_ops if tuple(inputs[k].shape) == shape and _dense(inputs[k])), None)
            out_strides = list(like.stride()) if like is not None else contiguous_strides(list(shape))
        lists = [out_strides] + [broadcast_strides(inputs[k], shape) for k in strided_ops]
        # walk the output in its memory order, so that writes (and same-layout reads) are coalesced
        perm = sorted(range(len(shape)), key=lambda d: -out_strides[d])
        csh, cst = collapse(tuple(shape[d] for d in perm), [[st[d] for d in perm] for st in lists])
        if len(csh) > MAX_RANK:
            raise Unsupported(f"{len(csh)} dims after collapsing (at most {MAX_RANK})")
        flat = contiguous_strides(csh)
        layouts: list = []
        for k in range(len(inputs)):
            if k in self.consts:
                layouts.append(("const", self.consts[k]))
            elif inputs[k].numel() == 1:
                layouts.append("scalar")
            else:
                st = cst[1 + strided_ops.index(k)]
                layouts.append("flat" if st == flat else "strided:" + "".join("0" if v == 0 else "s" for v in st))
        out_layout = "flat" if cst[0] == flat else "strided"
        rank = len(csh)
        extent = max([n] + [sum((s - 1) * abs(t) for s, t in zip(csh, st)) + 1 for st in cst])
        int64 = extent >= 2 ** 31 - 1
        spec = ElementwiseSpec(self.program, self.attrs, self.opset, dtypes, tuple(layouts), rank, out_layout,
                               out_dtype, int64)
        interp = interpreting()
        self.last_spec = spec
        gen = elementwise_source(spec, interp)  # cheap; raises Unsupported before anything is compiled
        mod = cache.load(cache.digest("elementwise", spec, interp), lambda: gen.source)
        values = {"N": n}
        for d in range(1, rank):
            values[f"size{d}"] = csh[d]
        for d in range(rank):
            values[f"out_s{d}"] = cst[0][d]
        for j, k in enumerate(strided_ops):
            for d in range(rank):
                values[f"in{k}_s{d}"] = cst[1 + j][d]  # (zero strides are not arguments: unused here)
        scalars = tuple(values[name] for name in gen.scalar_args)
        block, warps = self.config or block_config(n)
        grid = ((n + block - 1) // block,)
        slots = tuple(k for k in live)
        return mod.kernel, shape, tuple(out_strides), gen.out_dtype, n, scalars, grid, block, warps, slots
