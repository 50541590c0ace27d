"""Linear algebra: MatMul, Gemm, Einsum, Det.

Integer products: torch has integer matmul kernels on CPU only, so elsewhere they are computed
as a broadcast multiply and sum (exact, wrapping like ONNX's integer arithmetic). Unsigned types go
through int64 (two's complement products wrap to the same bits).
"""
from __future__ import annotations

import torch

from .reduce_dtypes import from_arith, to_arith
from .registry import OpSet

ops = OpSet("linalg")


def _is_int(t: torch.Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def _int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """matmul of integer tensors in int64 (ONNX shape rules: 1-D operands, batch broadcast)."""
    a, b = to_arith(a).to(torch.int64), to_arith(b).to(torch.int64)
    if a.device.type in ("cpu", "meta"):
        return torch.matmul(a, b)
    squeeze_a, squeeze_b = a.dim() == 1, b.dim() == 1
    a = a.unsqueeze(0) if squeeze_a else a
    b = b.unsqueeze(-1) if squeeze_b else b
    y = (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(dim=-2)
    if squeeze_a:
        y = y.squeeze(-2)
    return y.squeeze(-1) if squeeze_b else y


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if _is_int(a):
        return from_arith(_int_matmul(a, b), a.dtype)
    return torch.matmul(a, b)


@ops.op("MatMul")
def matmul(ctx, inputs, attrs):
    """MatMul: numpy.matmul semantics (batched, broadcast batch dims, 1-D operands)."""
    return _matmul(inputs[0], inputs[1])


@ops.op("Gemm")
def gemm(ctx, inputs, attrs):
    """Gemm: alpha * A' @ B' + beta * C, A'/B' optionally transposed, C optional and broadcast."""
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    if _is_int(a):
        return _int_gemm(a, b, c, alpha, beta)
    if c is not None and beta != 0.0:
        # one fused GEMM with the bias in its epilogue
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)
    y = a @ b
    return y * alpha if alpha != 1.0 else y


def _int_gemm(a, b, c, alpha, beta):
    # ONNX scales integer Gemms by float alpha/beta and truncates the result back
    y = _int_matmul(a, b)
    if alpha != 1.0:
        y = y.to(torch.float64) * alpha
    if c is not None and beta != 0.0:
        cc = to_arith(c).to(torch.int64)
        y = y + (cc.to(torch.float64) * beta if beta != 1.0 else cc)
    return from_arith(y.to(torch.int64), a.dtype)


@ops.op("Einsum")
def einsum(ctx, inputs, attrs):
    """Einsum: explicit ('->') and implicit forms, ellipsis broadcasting."""
    equation = attrs["equation"].replace(" ", "")
    dtype = inputs[0].dtype
    if dtype in (torch.float16, torch.bfloat16):
        # accumulate reduced-precision products in float32
        return torch.einsum(equation, *[t.to(torch.float32) for t in inputs]).to(dtype)
    if _is_int(inputs[0]):
        wide = [to_arith(t).to(torch.int64) for t in inputs]
        if wide[0].device.type not in ("cpu", "meta"):
            # no integer GEMM kernels on accelerators: exact for |values| below 2**53
            return torch.einsum(equation, *[t.to(torch.float64) for t in wide]).round().to(torch.int64).to(dtype)
        return from_arith(torch.einsum(equation, *wide), dtype)
    return torch.einsum(equation, *inputs)


@ops.op("Det")
def det(ctx, inputs, attrs):
    """Det: determinant of each square matrix in the trailing two dims."""
    x = inputs[0]
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.det(x.to(torch.float32)).to(x.dtype)
    return torch.linalg.det(x)
