"""2-d MaxPool on channels-last data in Triton (tactic ``triton_pool``).

Why: torch's channels-last max-pool kernel took 0.83 ms for ResNet-50's stem pool at batch 256 on the H200
([256, 64, 112, 112] float16, 3x3 stride 2) where reading the input once and writing the output once is
~0.1 ms of memory traffic. Here a program takes BLOCK_P output pixels by BLOCK_C channels: each window tap is
one [BLOCK_P, BLOCK_C] load of contiguous channel runs (padding reads -inf), and the max keeps NaN as torch
does. Neighbouring windows overlap (3x3 stride 2 reads each input pixel ~2.25 times); L2 serves the repeats.
Takes float inputs, no dilation, ceil_mode 0, one output (no Indices). For ``kiln::MaxPoolQuantize`` (made by
kiln/passes/quantize_outputs.py where every reader quantizes the pool's output to fp8 or symmetric int8) it
stores the 8-bit codes of the max instead: quantization is monotonic, so that is the max of the codes the readers
would compute.
"""
from __future__ import annotations

import torch

from . import cache
from .codegen import prelude, to_fp8_source
from .fp8_gemm import _INT8_SOURCE, _reciprocal
from .launch import interpreting
from .layers import TritonLayer
from .ops import Unsupported

BLOCK_P, BLOCK_C = 32, 64
_Q_OUT = {"fp8e4m3": torch.float8_e4m3fn, "int8": torch.int8}  # the quantized outputs the kernel stores


def max_pool_source(interpret: bool, q_out: str = "") -> str:
    """The kernel; ``q_out`` "fp8e4m3" / "int8": store the max quantized to that type (else as the input's)."""
    if q_out == "int8":
        store, head = "_to_int8(acc * inv_q_scale)", prelude({"_rint"}, interpret) + _INT8_SOURCE
    elif q_out:
        store = "_to_fp8(acc * inv_q_scale)"
        head = prelude({"_rint"} if interpret else set(), interpret) + to_fp8_source(interpret)
    else:
        store, head = "acc.to(out_ptr.dtype.element_ty)", prelude(set(), interpret)
    return "\n".join(head) + '''


@triton.jit
def kiln_max_pool(x_ptr, out_ptr, P, H, W, OH, OW, C, sxn, sxh, sxw, son, soh, sow, inv_q_scale,
                  KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr,
                  PW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    rp = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ow = rp % OW
    t = rp // OW
    oh = t % OH
    n = t // OH
    p_ok = rp < P
    c_ok = (rc < C)[None, :]
    acc = tl.full([BLOCK_P, BLOCK_C], float("-inf"), tl.float32)
    for kh in tl.static_range(KH):
        for kw in tl.static_range(KW):
            ih = oh * SH - PH + kh
            iw = ow * SW - PW + kw
            ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + rc[None, :], mask=ok[:, None] & c_ok,
                        other=float("-inf")).to(tl.float32)
            acc = tl.where((v > acc) | (v != v), v, acc)
    tl.store(out_ptr + (n * son + oh * soh + ow * sow)[:, None] + rc[None, :], STORE, mask=p_ok[:, None] & c_ok)


kernel = kiln_max_pool
'''.replace("STORE", store)


class MaxPoolLaunch:
    """One MaxPool layer's kernel (geometry bound at build from the node's attributes)."""

    def __init__(self, attrs: dict):
        self.q_scale = float(attrs["q_scale"]) if "q_scale" in attrs else None
        self.q_dtype = attrs.get("q_dtype", "") if self.q_scale is not None else ""
        if self.q_scale is not None and (self.q_dtype not in _Q_OUT or int(attrs.get("q_zero_point", 0))):
            raise Unsupported(f"a {self.q_dtype} output with zero point {attrs.get('q_zero_point', 0)} (fp8 or "
                              "symmetric int8 only)")
        self._inv_q_scale = _reciprocal(self.q_scale)
        kernel = [int(k) for k in attrs.get("kernel_shape", [])]
        if len(kernel) != 2:
            raise Unsupported(f"a {len(kernel)}-d pool (2-d only)")
        if any(int(d) != 1 for d in attrs.get("dilations", [1, 1])) or int(attrs.get("ceil_mode", 0)):
            raise Unsupported("dilations or ceil_mode")
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise Unsupported(f"auto_pad {attrs.get('auto_pad')}")
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        if pads[:2] != pads[2:]:
            raise Unsupported(f"asymmetric pads {pads}")
        self.kh, self.kw = kernel
        self.sh, self.sw = (int(s) for s in attrs.get("strides", [1, 1]))
        self.ph, self.pw = pads[:2]
        if self.ph >= self.kh or self.pw >= self.kw:
            raise Unsupported(f"pads {pads} as large as the window {kernel}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or not x.is_floating_point() or x.dtype == torch.float64:
            raise Unsupported(f"a {x.dtype} input of rank {x.dim()}")
        if not x.is_contiguous(memory_format=torch.channels_last):
            raise Unsupported("an input that is not channels-last")
        n, c, h, w = x.shape
        oh, ow = (h + 2 * self.ph - self.kh) // self.sh + 1, (w + 2 * self.pw - self.kw) // self.sw + 1
        dtype = x.dtype if self.q_scale is None else _Q_OUT[self.q_dtype]
        out = torch.empty((n, c, oh, ow), dtype=dtype, device=x.device, memory_format=torch.channels_last)
        p = n * oh * ow
        if out.numel() == 0:
            return out
        if x.numel() >= 2 ** 31:
            raise Unsupported("more than 2**31 elements (32-bit offsets)")
        interp = interpreting()
        mod = cache.load(cache.digest("max_pool", interp, self.q_dtype), lambda: max_pool_source(interp, self.q_dtype))
        grid = (-(-p // BLOCK_P), -(-c // BLOCK_C))
        mod.kernel[grid](x, out, p, h, w, oh, ow, c, x.stride(0), x.stride(2), x.stride(3),
                         out.stride(0), out.stride(2), out.stride(3), self._inv_q_scale,
                         KH=self.kh, KW=self.kw, SH=self.sh,
                         SW=self.sw, PH=self.ph, PW=self.pw, BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C, num_warps=4)
        return out


class MaxPoolLayer(TritonLayer):
    """The tactic's layer: the Triton kernel, or (counted in ``fallbacks``) the op's own for a call it cannot take."""

    accepts_out = ()  # makes its own (channels-last) output

    def __init__(self, node, fallback):
        super().__init__(node, fallback)
        self.launch = MaxPoolLaunch(node.attrs)
        q = {"fp8e4m3": "fp8", "int8": "s8"}.get(self.launch.q_dtype)
        self.name = "triton_max_pool" + (f"[{q} out]" if q else "")

    def run(self, ctx, inputs, attrs, out):
        if out is not None:
            raise Unsupported("writing into a given buffer")
        return self.launch(inputs[0])
