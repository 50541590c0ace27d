"""MatMulNBits (com.microsoft) in Triton: ``A @ dequantize(B)^T + bias`` with the 2/4/8-bit weights unpacked and
dequantized in registers (tactic ``triton_nbits``).

Why: the op's own kernel (kiln/ops/contrib_ms_quant.py) expands the whole float weight on every call, which
for a decoder's 4-bit matmuls moves 8x the bytes the packed weight holds. Two kernels, one per regime:

- a few rows (``GEMV_MAX_ROWS``, a decoder's token step): memory bound, so each program takes one row and
  ``GEMV_N`` outputs and streams its weight rows' packed bytes, ``GEMV_GROUPS`` quantization blocks at a time
  as a [GEMV_N, groups, bytes] tile. Each byte is loaded once and gives its ``8 // bits`` values by shifts;
  the activation is read at the matching strided positions, so no interleaving is needed. A block's zero
  point is subtracted per value and its scale multiplies the block's sum: one scale and zero load per block,
  not per value. The first version dequantized a [K, N] tile per program for ``tl.dot`` with per-value scale
  loads and ran 9x slower than the fp16 GEMM at batch 1 on an H100 (0.60 ms against 0.066 ms, 4096x4096).
- more rows: a [BLOCK_M, BLOCK_N] output tile per program walks K in steps of at most one quantization
  block (so scale and zero point are one [BLOCK_N] load per step), unpacks a [BLOCK_K, BLOCK_N] weight tile
  and feeds ``tl.dot``.

Zero points, whatever their stored form (packed uint8, float, or the default 2**(bits-1)), are expanded once
at build into a float32 [N, blocks] table beside the scales. float16/bfloat16 activations multiply on tensor
cores in their own type in the tiled kernel; float32 keeps IEEE float32 products (no TF32). The row kernel
multiplies in float32 whatever the activation type. NaN and Inf propagate as in the op's own kernel: a value
is ``(q - zero) * a`` before scaling, so an Inf activation against a weight of exactly zero gives NaN there too.
"""
from __future__ import annotations

import torch

from . import cache
from .codegen import prelude
from .launch import interpreting
from .layers import TritonLayer
from .ops import Unsupported

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps) of the tiled kernel, then (GEMV_N, GEMV_GROUPS, num_warps) of the row
# kernel; a stored 4-number config (engines and timing caches from before the row kernel) gets DEFAULT_GEMV.
CONFIGS = [(16, 64, 64, 4, 16, 4, 4), (32, 64, 64, 4, 32, 4, 4), (64, 128, 32, 8, 16, 8, 4), (32, 64, 64, 4, 64, 2, 8),
           (64, 128, 32, 8, 8, 16, 4), (64, 128, 32, 8, 16, 16, 8)]
DEFAULT_GEMV = (16, 4, 4)
GEMV_MAX_ROWS = 4  # at most this many rows take the row kernel (one program per row and GEMV_N outputs)


def nbits_source(interpret: bool) -> str:
    return "\n".join(prelude(set(), interpret)) + '''


@triton.jit
def kiln_matmul_nbits(a_ptr, b_ptr, s_ptr, z_ptr, bias_ptr, c_ptr, M, N, K, sam, sbn, blocks,
                      BITS: tl.constexpr, QBLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ZEROS: tl.constexpr,
                      IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # BLOCK_K divides QBLOCK: a step of K lies in one quantization block
    PER: tl.constexpr = 8 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        a = tl.load(a_ptr + rm[:, None] * sam + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w_ok = k_ok[:, None] & n_ok[None, :]
        byte = tl.load(b_ptr + rn[None, :] * sbn + (rk // PER)[:, None], mask=w_ok, other=0).to(tl.int32)
        q = (byte >> ((rk % PER) * BITS)[:, None]) & MASK
        at = rn * blocks + k0 // QBLOCK
        scale = tl.load(s_ptr + at, mask=n_ok, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            w = (q.to(tl.float32) - tl.load(z_ptr + at, mask=n_ok, other=0.0)[None, :]) * scale[None, :]
        else:
            w = (q.to(tl.float32) - (1 << (BITS - 1))) * scale[None, :]
        if IEEE:
            acc += tl.dot(a.to(tl.float32), w, input_precision="ieee")
        else:
            acc += tl.dot(a, w.to(a.dtype))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def kiln_gemv_nbits(a_ptr, b_ptr, s_ptr, z_ptr, bias_ptr, c_ptr, N, K, sam, sbn, blocks,
                    BITS: tl.constexpr, QBLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ZEROS: tl.constexpr,
                    BLOCK_N: tl.constexpr, GROUPS: tl.constexpr):
    PER: tl.constexpr = 8 // BITS
    QB: tl.constexpr = QBLOCK // PER  # packed bytes per quantization block
    MASK: tl.constexpr = (1 << BITS) - 1
    row = tl.program_id(1)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    rg = tl.arange(0, GROUPS)
    rq = tl.arange(0, QB)
    acc = tl.zeros([BLOCK_N, GROUPS], dtype=tl.float32)
    for g0 in range(0, blocks, GROUPS):
        g = g0 + rg
        g_ok = g < blocks
        kb = g[:, None] * QB + rq[None, :]  # [GROUPS, QB]: byte offsets in a weight row
        byte = tl.load(b_ptr + rn[:, None, None] * sbn + kb[None, :, :],
                       mask=n_ok[:, None, None] & g_ok[None, :, None], other=0).to(tl.int32)
        at = rn[:, None] * blocks + g[None, :]
        at_ok = n_ok[:, None] & g_ok[None, :]
        if HAS_ZEROS:
            zero = tl.load(z_ptr + at, mask=at_ok, other=0.0)
        else:  # no zero points given: the op's default, the middle of the range
            zero = tl.full([BLOCK_N, GROUPS], 1 << (BITS - 1), dtype=tl.float32)
        part = tl.zeros([BLOCK_N, GROUPS, QB], dtype=tl.float32)
        for j in tl.static_range(PER):
            k = kb * PER + j
            a = tl.load(a_ptr + row * sam + k, mask=g_ok[:, None] & (k < K), other=0.0).to(tl.float32)
            q = ((byte >> (j * BITS)) & MASK).to(tl.float32)
            part += (q - zero[:, :, None]) * a[None, :, :]
        acc += tl.load(s_ptr + at, mask=at_ok, other=0.0).to(tl.float32) * tl.sum(part, axis=2)
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(c_ptr + row * N + rn, out.to(c_ptr.dtype.element_ty), mask=n_ok)


kernel = kiln_matmul_nbits
gemv = kiln_gemv_nbits
'''


def zero_point_table(zps: torch.Tensor | None, n: int, blocks: int, bits: int) -> torch.Tensor:
    """The float32 [N, blocks] zero points of any stored form."""
    from ...ops.contrib_ms_quant import unpack_bits
    if zps is None:
        return torch.full((n, blocks), float(1 << (bits - 1)), dtype=torch.float32)
    if zps.dtype == torch.uint8:
        return unpack_bits(zps.reshape(n, -1), bits, blocks).to(torch.float32).contiguous()
    return zps.reshape(n, blocks).to(torch.float32).contiguous()


class NBitsLaunch:
    """One MatMulNBits layer: its packed weight, scales and zero points bound at build."""

    def __init__(self, attrs: dict, b: torch.Tensor, scales: torch.Tensor, zps: torch.Tensor | None,
                 bias: torch.Tensor | None, config: tuple):
        self.k, self.n = int(attrs["K"]), int(attrs["N"])
        self.bits, self.qblock = int(attrs.get("bits", 4)), int(attrs["block_size"])
        if self.bits not in (2, 4, 8):
            raise Unsupported(f"{self.bits}-bit weights")
        self.blocks = (self.k + self.qblock - 1) // self.qblock
        self.b = b.reshape(self.n, -1).contiguous()
        # scales stay in their stored 16-bit type (half the bytes a row kernel reads beside the weight)
        keep = scales.dtype in (torch.float16, torch.bfloat16, torch.float32)
        self.scales = scales.reshape(self.n, self.blocks).to(scales.dtype if keep else torch.float32).contiguous()
        # no zero points given: no table either (the kernels use the default) and 4 bytes per block less to read
        self.zeros = None if zps is None else zero_point_table(zps, self.n, self.blocks, self.bits).to(b.device)
        self.bias = bias
        self.config = tuple(config)
        self.gemv_config = tuple(config[4:7]) if len(config) >= 7 else DEFAULT_GEMV
        if self.qblock < 16 or self.qblock & (self.qblock - 1):
            raise Unsupported(f"block_size {self.qblock} (the kernels take powers of two from 16)")

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        if a.dtype not in (torch.float32, torch.float16, torch.bfloat16) or a.shape[-1] != self.k:
            raise Unsupported(f"a {a.dtype} input with last dim {a.shape[-1]}")
        a2 = a.reshape(-1, self.k)
        if a2.stride(-1) != 1:
            a2 = a2.contiguous()
        m = a2.shape[0]
        out = torch.empty((m, self.n), dtype=a.dtype, device=a.device)
        if m == 0:
            return out.reshape(*a.shape[:-1], self.n)
        interp = interpreting()
        mod = cache.load(cache.digest("matmul_nbits", interp), lambda: nbits_source(interp))
        bias = self.bias if self.bias is not None else self.scales  # (unread placeholders: a pointer is needed)
        zeros = self.zeros if self.zeros is not None else self.scales
        if m <= GEMV_MAX_ROWS:
            gn, groups, warps = self.gemv_config
            mod.gemv[(-(-self.n // gn), m)](a2, self.b, self.scales, zeros, bias, out, self.n, self.k,
                                            a2.stride(0), self.b.stride(0), self.blocks, BITS=self.bits,
                                            QBLOCK=self.qblock, HAS_BIAS=self.bias is not None,
                                            HAS_ZEROS=self.zeros is not None, BLOCK_N=gn, GROUPS=groups,
                                            num_warps=warps)
        else:
            bm, bn, bk, warps = self.config[:4]
            grid = (-(-m // bm), -(-self.n // bn))
            mod.kernel[grid](a2, self.b, self.scales, zeros, bias, out, m, self.n, self.k, a2.stride(0),
                             self.b.stride(0), self.blocks, BITS=self.bits, QBLOCK=self.qblock,
                             HAS_BIAS=self.bias is not None, HAS_ZEROS=self.zeros is not None,
                             IEEE=a.dtype == torch.float32,
                             BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=min(bk, self.qblock), num_warps=warps)
        return out.reshape(*a.shape[:-1], self.n)


class NBitsLayer(TritonLayer):
    """The tactic's layer: the Triton kernel, or (counted in ``fallbacks``) the op's own for a call it cannot take."""

    accepts_out = ()

    def __init__(self, node, fallback, constants: dict, config: tuple):
        super().__init__(node, fallback)
        ins = list(node.inputs) + [None] * 6
        if ins[4] is not None:
            raise Unsupported("g_idx (act-order)")

        def bound(v):
            if v is None:
                return None
            t = constants.get(v.id)
            if t is None:
                raise Unsupported(f"input {v.name!r} is not a constant")
            return t
        self.launch = NBitsLaunch(node.attrs, bound(ins[1]), bound(ins[2]), bound(ins[3]), bound(ins[5]), config)
        self.name = "triton_nbits[{}x{}x{}/gemv {}x{}]".format(*config[:3], *self.launch.gemv_config[:2])

    def run(self, ctx, inputs, attrs, out):
        if out is not None:
            raise Unsupported("writing into a given buffer")
        return self.launch(inputs[0])
