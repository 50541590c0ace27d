"""An 8-bit implicit-GEMM convolution for kiln::QConv on Hopper, fp8 (e4m3) or int8 (fp8_gemm.CODES), every
operand through TMA, the layer's whole epilogue in the accumulator tile: ``y = conv(X8, W8) * (sx * sw[o]) +
bias``, the epilogue steps (relu, ``add:I`` residuals, ...), then the store: float16/bfloat16/float32, or
requantized to the 8-bit type for the next quantized layer (``out_scale``), so that convolution chains pass
8-bit activations. int8 accumulates in int32 (wgmma s8) and takes zero point 0 only: TMA's zero fill of the
padding is then the real zero.

Why a second convolution kernel (``qconv.py`` has one): that one gathers its activation tiles with pointer
loads, one pixel row at a time, and runs at 0.64-0.76x of cuDNN's fp16 convolutions on ResNet-50's 3x3 layers
(H200). Here the activation tile of one filter tap is one TMA box of the channels-last input, and the
padding is TMA's zero fill of coordinates outside the tensor (negative ones included):

- stride 1: X is the 4-d [N, H, W, C] view; tap (kh, kw) of output tile (n0, oh0, ow0) is the box
  [BB, BH, BW, BLOCK_K] at (n0, oh0 + kh - PH, ow0 + kw - PW, c0);
- stride 2: X is the 5-d [N, H/2, 2, W/2, 2C] view (H, W even): input row 2*oh + kh - PH is row
  ``oh + d // 2 - 1`` of parity ``d % 2`` with d = kh - PH + 2, and the column likewise, with the column's
  parity folded into the channel coordinate (``(d % 2) * C + c0``).

The output tile is BB images x BH rows x BW columns of output pixels (BLOCK_M = BB*BH*BW) by BLOCK_N output
channels; the box is reshaped to [BLOCK_M, BLOCK_K] for the wgmma (Triton 3.6 lowers this reshape through
registers: the wgmma reads A from registers, 2 LDS per K step; still 1.3-2x cuDNN fp16 on ResNet-50's 3x3
layers on the H200, benchmarks/bench_fp8_conv.py), and the output (and any residual) moves
as the [BB, BH, BW, BLOCK_N] box of the [N, OH, OW, O] view, which TMA clips at the edges. The weight is
packed once, at build, into [O, KH*KW*C] (tap-major, channels contiguous: K-major as 8-bit wgmma wants).
The kernel is persistent (one program per SM walks the tiles, grouped along M). Under TRITON_INTERPRET=1
it is one program per tile.

Block configurations (BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) are tactic parameters; the tile's
pixel box is the one that wastes least on the layer's output size (``choose_tile``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import cache
from .codegen import prelude
from .epilogue import epilogue_program
from .fp8_gemm import CODES, FLOAT_OUT, _acc_type, _descriptor, _device_limits, _float_acc, _index, _reciprocal, \
    extra_operands, tile_epilogue
from .launch import interpreting
from .ops import Unsupported

# (BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages[, BLOCK_M = 128[, programs per SM = 1]]); the tile's
# pixel box follows the layer's output size (choose_tile). The best of each ResNet-50 shape at batch 256 on the
# H200 (benchmarks/bench_fp8_conv.py).
CONFIGS = [
    (128, 128, 8, 8, 4),
    (256, 128, 8, 8, 3),
    (64, 64, 8, 4, 4),
    (128, 64, 8, 8, 4),
    (64, 64, 8, 8, 4, 256),   # stage 1's 3x3 (C = O = 64): 0.21 -> 0.14 ms
    (128, 64, 8, 8, 4, 256),  # stage 2's 3x3
    (64, 64, 8, 4, 4, 128, 2),  # stage 1's 3x3, two programs per SM: 0.141 -> 0.127 ms
]
INTERPRET_CONFIG = (32, 32, 4, 4, 1)
INTERPRET_TILE = (2, 4, 4)


@functools.lru_cache(maxsize=256)  # asked on every call: the answer depends on the shape alone
def choose_tile(n: int, oh: int, ow: int, block_m: int = 128) -> tuple[int, int, int]:
    """(BB, BH, BW), powers of two with BB*BH*BW = block_m, that waste the fewest computed pixels on an
    [n, oh, ow] output (ResNet-50 at batch 256: 56 -> 2x8x8, 28 -> 8x4x4, 14 -> 32x2x2, 7 -> 16x1x8);
    ties go to the squarer, wider pixel box (fewer images per tile). Boxes of at least 4 pixels."""
    best = None
    bh = 1
    while bh <= block_m:
        bw = 1
        while bh * bw <= block_m:
            bb = block_m // (bh * bw)
            if bh * bw >= 4:
                padded = -(-n // bb) * bb * -(-oh // bh) * bh * -(-ow // bw) * bw
                key = (padded, -(bh * bw), abs(bh - bw) if bw >= bh else bh)
                if best is None or key < best[0]:
                    best = (key, (bb, bh, bw))
            bw *= 2
        bh *= 2
    return best[1]
@dataclass(frozen=True)
class Fp8ConvSpec:
    """Everything the generated source depends on (sizes, scales and descriptors are launch arguments)."""
    stride2: bool
    bias_dtype: torch.dtype | None
    program: tuple
    attrs: tuple
    residual_dtypes: tuple        # float, or ``code`` for an ``addq`` residual (dequantized in the program)
    out_dtype: torch.dtype        # a float type, or ``code`` (requantized)
    persistent: bool
    q_out: bool = False           # also store the float result quantized to ``code`` (a second output)
    extras: tuple = ()            # the program's operands after acc/bias: residual j (int) or a constant (float)
    code: torch.dtype = torch.float8_e4m3fn  # the operands' 8-bit type (fp8_gemm.CODES)


def fp8_conv_source(spec: Fp8ConvSpec) -> str:
    helpers: set[str] = set()
    res = range(len(spec.residual_dtypes))
    args = ["x_desc", "w_desc", "out_desc", "scale_ptr"] + (["b_ptr"] if spec.bias_dtype else []) + \
        [f"r{j}_desc" for j in res] + (["q_desc"] if spec.q_out else []) + \
        ["NB", "OH", "OW", "O", "inv_out_scale", "inv_q_scale"] + \
        [f"{n}: tl.constexpr" for n in ("C", "KH", "KW", "PH", "PW", "BB", "BH", "BW", "BLOCK_N", "BLOCK_K",
                                        "GROUP_M", "NUM_SMS")]
    body = ["BLOCK_M: tl.constexpr = BB * BH * BW", "CB: tl.constexpr = C // BLOCK_K",
            "tiles_w = tl.cdiv(OW, BW)", "tiles_h = tl.cdiv(OH, BH)",
            "num_m = tl.cdiv(NB, BB) * tiles_h * tiles_w", "num_n = tl.cdiv(O, BLOCK_N)",
            "group = GROUP_M * num_n"]
    if spec.persistent:
        body += ["for tile in tl.range(tl.program_id(0), num_m * num_n, NUM_SMS, flatten=True):"]
    else:
        body += ["if True:", "    tile = tl.program_id(0)"]
    if spec.stride2:  # d = kh - PH + 2 >= 0: row oh + d // 2 - 1 of parity d % 2 (and the column likewise)
        load = ["    dh = kh - PH + 2", "    dw = kw - PW + 2",
                "    a = x_desc.load([n0, oh0 + dh // 2 - 1, dh % 2, ow0 + dw // 2 - 1, (dw % 2) * C + c0])"]
    else:
        load = ["    a = x_desc.load([n0, oh0 + kh - PH, ow0 + kw - PW, c0])"]
    t = ["first_m = (tile // group) * GROUP_M", "size_m = tl.minimum(num_m - first_m, GROUP_M)",
         "pid_m = first_m + ((tile % group) % size_m)", "pid_n = (tile % group) // size_m",
         "ow0 = (pid_m % tiles_w) * BW", "oh0 = ((pid_m // tiles_w) % tiles_h) * BH",
         "n0 = (pid_m // (tiles_w * tiles_h)) * BB", "on = pid_n * BLOCK_N",
         f"acc = tl.zeros([BLOCK_M, BLOCK_N], dtype={_acc_type(spec.code)})",
         "for ks in range(KH * KW * CB):",
         "    tap = ks // CB", "    c0 = (ks % CB) * BLOCK_K", "    kh = tap // KW", "    kw = tap % KW"] + load + [
         "    w = w_desc.load([on, ks * BLOCK_K])",
         "    acc = tl.dot(a.reshape([BLOCK_M, BLOCK_K]), w.T, acc)",
         "rn = on + tl.arange(0, BLOCK_N)"] + _float_acc(spec.code) + [
         "acc = acc * tl.load(scale_ptr + rn, mask=rn < O, other=0.0)[None, :]"]
    epi, fp8 = tile_epilogue(spec, helpers, "O",
                             lambda j: f"r{j}_desc.load([n0, oh0, ow0, on]).reshape([BLOCK_M, BLOCK_N])",
                             lambda desc, v: f"{desc}.store([n0, oh0, ow0, on], {v}.reshape([BB, BH, BW, BLOCK_N]))",
                             not spec.persistent)
    body += ["    " + ln for ln in t + epi]
    src = prelude(helpers, not spec.persistent) + fp8 + ["", "", "@triton.jit",
                                                         f"def kiln_fp8_conv({', '.join(args)}):"]
    return "\n".join(src + ["    " + ln for ln in body] + ["", "", "kernel = kiln_fp8_conv"]) + "\n"


def _nhwc(t: torch.Tensor) -> bool:
    """A 4-d [N, C, H, W] tensor stored channels-last, 16-byte aligned rows (what the TMA views need)."""
    n, c, h, w = t.shape
    return t.is_contiguous(memory_format=torch.channels_last) and t.data_ptr() % 16 == 0 \
        and (c * t.element_size()) % 16 == 0


def _box_view(t: torch.Tensor, box: list[int]):
    """The [N, H, W, C] tensor descriptor of a channels-last [N, C, H, W] tensor."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    n, c, h, w = t.shape
    return TensorDescriptor(t, [n, h, w, c], [h * w * c, w * c, c, 1], box)


class Fp8ConvLaunch:
    """One kiln::QConv's 8-bit convolution (the weight's type: float8_e4m3fn or int8): packed weight, per-channel
    scale, bias and the epilogue, bound once.
    Takes 2-d convolutions of group 1, dilation 1, stride 1 or 2, symmetric pads (at most 2 at stride 2),
    C a multiple of 16 and O a multiple of 16."""

    def __init__(self, w8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, attrs: dict,
                 steps: list[str], out_scale: float | None, config: tuple, q_scale: float | None = None):
        if w8.dtype not in CODES or w8.dim() != 4:
            raise Unsupported(f"an 8-bit convolution weight of {w8.dtype}{list(w8.shape)}")
        self.code = w8.dtype
        if int(attrs.get("group", 1)) != 1 or list(attrs.get("dilations", [1, 1])) != [1, 1]:
            raise Unsupported(f"group {attrs.get('group', 1)} / dilations {attrs.get('dilations')}")
        self.o, self.c, self.kh, self.kw = w8.shape
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        strides = [int(s) for s in attrs.get("strides", [1, 1])]
        if pads[:2] != pads[2:] or strides[0] != strides[1] or strides[0] not in (1, 2):
            raise Unsupported(f"pads {pads} / strides {strides} (symmetric pads, stride 1 or 2)")
        self.ph, self.pw = pads[:2]
        self.stride = strides[0]
        if self.stride == 2 and max(self.ph, self.pw) > 2:
            raise Unsupported(f"pads {pads} at stride 2 (at most 2)")
        if self.c % 16 or self.o % 16:
            raise Unsupported(f"C={self.c} and O={self.o} must be multiples of 16 (TMA's 16-byte rows)")
        self.config = tuple(int(v) for v in config)
        if len(self.config) not in (5, 6, 7):
            raise Unsupported(f"config {self.config}: (BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages[, BLOCK_M"
                              "[, programs per SM]])")
        self.block_m = self.config[5] if len(self.config) >= 6 else 128
        self.per_sm = self.config[6] if len(self.config) == 7 else 1
        bn, bk = self.config[:2]
        if self.c % bk and not interpreting():  # (the interpreter runs INTERPRET_CONFIG, BLOCK_K 32 or 16)
            raise Unsupported(f"C={self.c} is not a multiple of BLOCK_K={bk}")
        self.w8 = w8.permute(0, 2, 3, 1).reshape(self.o, -1).contiguous()  # [O, KH*KW*C]
        self.scale = scale.reshape(-1).to(torch.float32).expand(self.o).contiguous()
        self.bias = None if bias is None else bias.reshape(-1).contiguous()
        self.steps = list(steps)
        program, eattrs, self.operands = epilogue_program(self.steps, bias is not None)
        self.program = tuple(program)
        self.eattrs = tuple(tuple(sorted(a.items())) for a in eattrs)
        self.residuals, self.extras = extra_operands(self.operands)
        if out_scale is not None and q_scale is not None:
            raise Unsupported("a requantized output and a second quantized copy")
        self.out_scale, self.q_scale = out_scale, q_scale
        self._inv_out_scale, self._inv_q_scale = _reciprocal(out_scale), _reciprocal(q_scale)
        self._w_desc = None

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        s = self.stride
        return (h + 2 * self.ph - self.kh) // s + 1, (w + 2 * self.pw - self.kw) // s + 1

    def check_fits(self, out_bytes: int, residual_bytes: list[int], device: torch.device, bm: int = 128) -> None:
        bn, bk, _, _, stages = self.config[:5]
        out_bytes += 1 if self.q_scale is not None else 0
        smem = stages * (bm + bn) * bk + bm * bn * (out_bytes + sum(residual_bytes))
        limit = _device_limits(_index(device))[1] // self.per_sm
        if smem > limit:
            raise Unsupported(f"config {self.config} needs ~{smem} bytes of shared memory, the GPU has {limit}")

    @property
    def name(self) -> str:
        epi = "+".join((["bias"] if self.bias is not None else []) + self.steps) or "none"
        kind = "s8" if self.code == torch.int8 else "fp8"
        return f"triton_{kind}_conv[{self.kh}x{self.kw}s{self.stride},{epi}{',requant' if self.out_scale else ''}" \
               f"{f',+{kind} copy' if self.q_scale is not None else ''}]"

    def _x_desc(self, x8: torch.Tensor, box: tuple):
        from triton.tools.tensor_descriptor import TensorDescriptor
        bb, bh, bw, bk = box
        n, c, h, w = x8.shape
        if self.stride == 1:
            return _box_view(x8, [bb, bh, bw, bk])
        if h % 2 or w % 2:
            raise Unsupported(f"a stride-2 input of odd size {h}x{w}")
        return TensorDescriptor(x8, [n, h // 2, 2, w // 2, 2 * c], [h * w * c, 2 * w * c, w * c, 2 * c, 1],
                                [bb, bh, 1, bw, bk])

    def __call__(self, x8: torch.Tensor, residuals: list[torch.Tensor], out_dtype: torch.dtype,
                 tile: tuple | None = None):
        """The [N, O, OH, OW] channels-last output of ``out_dtype``; with ``q_scale`` the pair (that, its 8-bit
        copy). ``tile`` = (BB, BH, BW) instead of choose_tile's (benchmarks)."""
        if x8.dtype != self.code or x8.dim() != 4 or x8.shape[1] != self.c or not _nhwc(x8):
            raise Unsupported(f"an X operand {x8.dtype}{list(x8.shape)} with strides {x8.stride()} (channels-last "
                              f"{self.code} with C={self.c})")
        if out_dtype not in FLOAT_OUT and out_dtype != self.code:
            raise Unsupported(f"an output of {out_dtype}")
        n, _, h, w = x8.shape
        oh, ow = self.out_hw(h, w)
        if self.q_scale is not None and out_dtype == self.code:
            raise Unsupported("an 8-bit output with a second 8-bit copy")
        out = torch.empty((n, self.o, oh, ow), dtype=out_dtype, device=x8.device, memory_format=torch.channels_last)
        q = None if self.q_scale is None else torch.empty_like(out, dtype=self.code)
        if out.numel() == 0:
            return out if q is None else (out, q)
        for r in residuals:
            if tuple(r.shape) != tuple(out.shape) or not _nhwc(r) or r.dtype not in FLOAT_OUT + (self.code,):
                raise Unsupported(f"a residual {r.dtype}{list(r.shape)} with strides {r.stride()} (TMA wants it "
                                  f"channels-last, of the output's shape {list(out.shape)})")
        interp = interpreting()
        bn, bk, gm, warps, stages = INTERPRET_CONFIG if interp else self.config[:5]
        if interp and self.c % bk:
            bk = 16
        bb, bh, bw = tile or (INTERPRET_TILE if interp else choose_tile(n, oh, ow, self.block_m))
        if not interp:
            self.check_fits(out.element_size(), [r.element_size() for r in residuals], x8.device, bb * bh * bw)
        spec = Fp8ConvSpec(self.stride == 2, None if self.bias is None else self.bias.dtype, self.program,
                           self.eattrs, tuple(r.dtype for r in residuals), out_dtype, not interp, q is not None,
                           self.extras, self.code)
        mod = cache.load(cache.digest("fp8_conv", spec), lambda: fp8_conv_source(spec))
        if self._w_desc is None or self._w_desc[0] != (bn, bk):
            self._w_desc = ((bn, bk), _descriptor(self.w8, [bn, bk]))
        tiles = -(-n // bb) * -(-oh // bh) * -(-ow // bw) * -(-self.o // bn)
        sms = tiles if interp else _device_limits(_index(x8.device))[0] * self.per_sm  # persistent programs
        grid = (tiles if interp else min(sms, tiles),)
        extra = [self.scale] + ([self.bias] if self.bias is not None else [])
        mod.kernel[grid](self._x_desc(x8, (bb, bh, bw, bk)), self._w_desc[1], _box_view(out, [bb, bh, bw, bn]),
                         *extra, *[_box_view(r, [bb, bh, bw, bn]) for r in residuals],
                         *([_box_view(q, [bb, bh, bw, bn])] if q is not None else []), n, oh, ow, self.o,
                         self._inv_out_scale, self._inv_q_scale,
                         C=self.c, KH=self.kh, KW=self.kw, PH=self.ph, PW=self.pw, BB=bb, BH=bh, BW=bw,
                         BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, NUM_SMS=sms, num_warps=warps, num_stages=stages)
        return out if q is None else (out, q)
