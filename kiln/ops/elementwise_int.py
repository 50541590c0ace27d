"""Integer arithmetic the elementwise kernels share, including what torch lacks for unsigned types.

torch has almost no kernels for uint16/uint32/uint64 (only copies, ``*``, ``==`` and bitwise and/or/xor).
uint16/uint32 values fit int64 exactly, so they are computed there and cast back (casts wrap like C).
uint64 is reinterpreted bit for bit as int64: add, sub, mul and bitwise ops agree in two's complement;
ordering, division and right shifts get their own unsigned versions below.
"""
from __future__ import annotations

import torch

INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1
_WIDENED = (torch.uint16, torch.uint32)
_SIGNED_OF = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


def is_unsigned(dt: torch.dtype) -> bool:
    return not dt.is_floating_point and not dt.is_complex and not dt.is_signed and dt != torch.bool


def widen(t: torch.Tensor) -> torch.Tensor:
    """A tensor torch can compute with, holding the same bits modulo 2**64 (see module doc)."""
    if t.dtype in _WIDENED:
        return t.to(torch.int64)
    if t.dtype == torch.uint64:
        return t.view(torch.int64)
    return t


def as_signed_bits(t: torch.Tensor) -> torch.Tensor:
    """The same bits viewed as the signed type of the same size, for ops that only move or mask bits."""
    return t.view(_SIGNED_OF[t.dtype]) if t.dtype in _SIGNED_OF else t


def narrow(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Back to ``dtype`` from ``widen``'s or ``as_signed_bits``' type, wrapping like a C cast."""
    if t.dtype == dtype:
        return t
    if _SIGNED_OF.get(dtype) == t.dtype:
        return t.view(dtype)
    return t.to(dtype)


def ordered(t: torch.Tensor) -> torch.Tensor:
    """An order-preserving image of ``t`` in a type torch compares (flipping the top bit maps uint64 to int64)."""
    if t.dtype == torch.uint64:
        return t.view(torch.int64) ^ INT64_MIN
    return widen(t)


def unordered(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``ordered``."""
    if dtype == torch.uint64:
        return (t ^ INT64_MIN).view(torch.uint64)
    return narrow(t, dtype)


def _logical_shr1(t: torch.Tensor) -> torch.Tensor:
    return (t >> 1) & INT64_MAX


def _udiv64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Unsigned 64-bit ``a // b`` on int64 bit patterns, b != 0 (Hacker's Delight 9-3).

    Halving ``a`` makes it non-negative, so signed division gives a quotient estimate that is at most
    one too small; divisors >= 2**63 give a quotient of 0 or 1.
    """
    big = b < 0
    b_small = torch.where(big, 1, b)
    q = torch.div(_logical_shr1(a), b_small, rounding_mode="floor") << 1
    r = a - q * b_small
    q = q + ((r ^ INT64_MIN) >= (b_small ^ INT64_MIN)).to(torch.int64)
    q_big = ((a ^ INT64_MIN) >= (b ^ INT64_MIN)).to(torch.int64)
    return torch.where(big, q_big, q)


def int_divmod(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """Integer ``a / b`` truncated (mode 'div'), or remainder ('mod': sign of b, 'fmod': sign of a).

    Division by zero is undefined in ONNX; torch raises on CPU and returns garbage on CUDA, so Kiln
    defines it as 0 (as numpy does) on every device.
    """
    dtype = a.dtype
    zero = b == 0
    if dtype == torch.uint64:
        a, b = widen(a), widen(b)
        b = torch.where(zero, 1, b)
        q = _udiv64(a, b)
        out = q if mode == "div" else a - q * b
    else:
        a, b = widen(a), widen(b)
        b = torch.where(zero, 1, b)
        if mode == "div":
            out = torch.div(a, b, rounding_mode="trunc")
        elif mode == "fmod":
            out = torch.fmod(a, b)
        else:
            out = torch.remainder(a, b)
    return narrow(torch.where(zero, 0, out), dtype)


def shift(x: torch.Tensor, y: torch.Tensor, left: bool) -> torch.Tensor:
    """BitShift: shifts by a negative amount or by >= the bit width leave only the sign fill."""
    dtype = x.dtype
    bits = dtype.itemsize * 8
    xw, yw = widen(x), widen(y)
    out_of_range = (yw < 0) | (yw >= bits)
    s = yw.clamp(0, bits - 1).to(xw.dtype)
    if left:
        return narrow(torch.where(out_of_range, 0, xw << s), dtype)
    if dtype == torch.uint64:
        # int64's >> copies the sign bit; a first logical shift by one clears it.
        shifted = torch.where(s == 0, xw, _logical_shr1(xw) >> (s - 1).clamp(min=0))
    else:
        shifted = xw >> s
    fill = xw >> (bits - 1) if dtype.is_signed else torch.zeros_like(xw)
    return narrow(torch.where(out_of_range, fill, shifted), dtype)
