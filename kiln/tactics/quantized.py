"""Tactics for kiln::QLinear and kiln::QConv on CUDA: the 8-bit GEMM with one Triton pass on each side.

- ``int8_fast``: Triton quantize (one pass) -> ``torch._int_mm`` (int32) -> one Triton pass for
  ``acc * (sx * sw[n]) + bias'[n]``, the epilogue steps, and the float16 (or requantized int8) store.
  A zero point is folded into the bias at build: ``(acc - zp * sum_k W[n,k]) * s[n] + b = acc * s[n] + b'``.
- ``fp8_fast``: Triton quantize -> ``torch._scaled_mm`` with 0-d fp32 scales made once at build; with a
  per-tensor weight scale (what the quantization rewrite makes for fp8) the GEMM writes float16 with the bias
  in its epilogue, and only the remaining steps (GELU, a residual add, ...) take a pass, in place.
  A per-channel weight scale goes through float32 and the dequantizing pass.
- Both take kiln::QConv with a 1x1 kernel, stride 1, no padding, group 1, as the GEMM of the [N*H*W, C] view
  of a channels-last input (the output is the channels-last [N, O, H, W] view of the GEMM's [N*H*W, O]).
- ``fp8_triton``: kiln::QLinear with fp8 X through Kiln's own fp8 GEMM (``kiln/backends/triton/fp8_gemm.py``):
  the dequantize, bias, GELU, residual adds and an fp8 requantized output all in the GEMM's accumulator tile;
  X is quantized by one Triton pass unless it arrives fp8 (a producer requantized it). Block configs are
  tactic parameters.
- ``fp8_conv``: kiln::QConv with fp8 X through Kiln's fp8 TMA implicit-GEMM convolution
  (``kiln/backends/triton/fp8_conv.py``), or with ``gemm`` a 1x1 stride-1 layer through the fp8 GEMM above;
  the epilogue, residual adds and an fp8 requantized output fused, so fp8 activations chain conv to conv.
- ``int8_triton`` / ``int8_conv``: the same two kernels with int8 operands (wgmma s8, int32 accumulator) for
  layers with symmetric int8 X (zero point 0, what Kiln's calibration makes): the TMA path for INT8 engines.
- ``qconv_fp16``: any other QConv through a float16 cuDNN convolution of the quantized values (see
  :class:`QConvHalf` for when that is exact).

Every layer keeps the op's own kernel as its fallback: a call it cannot take (an unexpected dtype) runs that
kernel and the reason is counted in ``fallbacks`` (the tuner rejects a candidate that fell back). Per call there
are no host-to-device copies: scales, folded biases and transposed weights are made at build.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ..backends.triton.layers import TritonLayer
from ..backends.triton.launch import _dense
from ..backends.triton.ops import Unsupported
from ..ops.fused import _conv_pads
from ..ops.quantized import FP8_MAX, RANGES, STORAGE, _float_out
from .space import NotApplicable

log = logging.getLogger("kiln.tune")
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
HALF_BOUND = 2.0 ** 14  # |conv sums| kept below this in float16 (65504 max; margin for Winograd transforms)


# -- build-time helpers ----------------------------------------------------------------------------------------
def _require_cuda(device: torch.device, what: str) -> None:
    if device.type != "cuda":
        raise NotApplicable(f"{what} runs on CUDA devices (torch._int_mm / _scaled_mm / cuDNN float16)")


def _const(node, slot: int, constants: dict, what: str, optional: bool = False):
    v = node.inputs[slot] if len(node.inputs) > slot else None
    if v is None:
        if optional:
            return None
        raise NotApplicable(f"no {what} input")
    c = constants.get(v.id, getattr(v, "const", None))
    if c is None:
        raise NotApplicable(f"the {what} is not a constant")
    return c


def _check_layer(node, fp8: bool | None, copy_ok: bool = False) -> str:
    """The layer's X format; NotApplicable for what these tactics do not take (``copy_ok``: the tactic writes
    the second, quantized output of a layer with ``q_scale``)."""
    if (node.domain, node.op_type) not in (("kiln", "QLinear"), ("kiln", "QConv")):
        raise NotApplicable("for kiln::QLinear / kiln::QConv")
    a = node.attrs
    fmt = a.get("x_dtype", "int8")
    if fp8 is not None and fp8 != (fmt == "fp8e4m3"):
        raise NotApplicable(f"the layer's X is {fmt}")
    if a.get("x_dynamic"):
        raise NotApplicable("per-row dynamic scales")
    if "smooth_input" in a:
        raise NotApplicable("SmoothQuant input scaling")
    if a.get("input_quantized") and fmt == "uint8":
        raise NotApplicable("uint8 data arriving quantized (needs a centring pass)")
    if "q_scale" in a and not (copy_ok and a.get("q_dtype") == fmt and not int(a.get("q_zero_point", 0))):
        raise NotApplicable(f"a second, {a.get('q_dtype')} output (the TMA kernels, fp8_triton / fp8_conv / "
                            "int8_triton / int8_conv, write one of their own type)")
    return fmt


def _requant(attrs: dict) -> tuple | None:
    if "out_scale" not in attrs:
        return None
    return float(attrs["out_scale"]), int(attrs.get("out_zero_point", 0)), attrs["out_dtype"]


def _copy_scale(attrs: dict) -> float | None:
    """The scale of the layer's second, fp8 output (``q_scale``), or None."""
    return float(attrs["q_scale"]) if "q_scale" in attrs else None


def _out_dtype(x: torch.Tensor, attrs: dict) -> torch.dtype:
    return STORAGE[attrs["out_dtype"]] if "out_scale" in attrs else _float_out(x, attrs)


def _own_kernel(node):
    from ..ops import default_registry
    return default_registry().get(node.domain, node.op_type).kernel


def _is_gemm_conv(node, wq: torch.Tensor) -> bool:
    a = node.attrs
    return (wq.dim() == 4 and tuple(wq.shape[2:]) == (1, 1) and int(a.get("group", 1)) == 1
            and all(int(s) == 1 for s in a.get("strides", [1, 1])) and all(int(p) == 0 for p in a.get("pads", [0] * 4))
            and all(int(d) == 1 for d in a.get("dilations", [1, 1])))


class _Counting(TritonLayer):
    """TritonLayer plus a logged count of layout conversions a call needed (visible, never silent)."""

    accepts_out = ()  # they make their own outputs: the runtime arena must not hand them a buffer

    def __init__(self, node, fallback):
        super().__init__(node, fallback)
        self.conversions: dict[str, int] = {}

    def _convert(self, why: str) -> None:
        if why not in self.conversions:
            log.warning("layer %s (%s): %s", self.label, self.name, why)
        self.conversions[why] = self.conversions.get(why, 0) + 1


# -- GEMM layers ------------------------------------------------------------------------------------------------
class QGemm(_Counting):
    """kiln::QLinear (or a 1x1 kiln::QConv) as quantize -> 8-bit GEMM -> dequantize+epilogue, 3 kernels."""

    def __init__(self, node, constants: dict, device: torch.device, fp8: bool):
        super().__init__(node, _own_kernel(node))
        a = node.attrs
        self.fmt = _check_layer(node, fp8)
        wq = _const(node, 1, constants, "weight")
        w_scale = _const(node, 2, constants, "weight scale").to(device=device, dtype=torch.float32).reshape(-1)
        bias = _const(node, 3, constants, "bias", optional=True)
        self.conv = node.op_type == "QConv"
        if self.conv and not _is_gemm_conv(node, wq):
            raise NotApplicable("a QConv that is not 1x1 / stride 1 / unpadded / group 1 (see qconv_fp16)")
        w2 = wq.reshape(wq.shape[0], -1).to(device)
        n, k = w2.shape
        align = 16 if fp8 else 8
        if k % align or n % align:
            raise NotApplicable(f"K={k} and N={n} must be multiples of {align}")
        self.n, self.k, self.fp8 = n, k, fp8
        self.wt = w2.t()  # [K, N] column-major: the layout cuBLASLt wants for the second operand
        self.input_quantized = bool(a.get("input_quantized"))
        zp = int(a.get("x_zero_point", 0))
        self.row_align = 16 if fp8 else 32  # cuBLASLt int8 rejected M=17, 24 on the H200: M padded to 32s
        from ..backends.triton.quant import DequantEpilogue, Quantize
        self.quant = None if self.input_quantized else Quantize(float(a["x_scale"]), self.fmt, zp, "q")
        sx = float(a["x_scale"])
        steps = list(a.get("epilogue", []))
        requant = _requant(a)
        if requant is not None and requant[2] == "fp8e4m3":
            raise NotApplicable("an fp8 requantized output (fp8_triton writes it)")
        shape = (-1, 1, 1) if self.conv else (-1,)
        bias32 = None if bias is None else bias.to(device=device, dtype=torch.float32).reshape(-1)
        self.gemm_bias: dict = {}
        self.per_tensor = fp8 and w_scale.numel() == 1
        try:
            if self.per_tensor:  # the GEMM applies sx * sw and adds the bias (in float16/bfloat16 output)
                self.scale_a = torch.tensor(sx, device=device, dtype=torch.float32)
                self.scale_b = w_scale.reshape(()).clone()
                if bias32 is not None:
                    self.gemm_bias = {dt: bias32.to(dt) for dt in (torch.float16, torch.bfloat16)}
                self.epi = DequantEpilogue(steps, None, None, requant) if steps or requant else None
                self.epi32 = DequantEpilogue(steps, None, None if bias32 is None else bias32.reshape(shape), requant) \
                    if steps or requant or bias32 is not None else None
            else:
                s = (w_scale * sx).expand(n).contiguous()  # the own kernel's w_scale * sx, bit for bit
                if fp8:
                    self.scale_a = torch.tensor(sx, device=device, dtype=torch.float32)
                    self.scale_b = torch.ones((), device=device, dtype=torch.float32)
                    s = w_scale.expand(n).contiguous()
                zp_eff = zp - 128 if self.fmt == "uint8" and not self.input_quantized else zp
                if zp_eff:  # (acc - zp * colsum) * s + b == acc * s + (b - zp * colsum * s)
                    fold = -zp_eff * w2.to(torch.float64).sum(1) * s.double()
                    bias32 = (fold if bias32 is None else bias32.double() + fold).float()
                self.epi = DequantEpilogue(steps, s.reshape(shape), None if bias32 is None else bias32.reshape(shape),
                                           requant)
        except Unsupported as e:
            raise NotApplicable(str(e)) from None
        kind = "fp8.scaled_mm" if fp8 else "int8.int_mm"
        self.name = f"triton_quant+{kind}+triton_epilogue[{'+'.join(steps) or 'none'}{'+requant' if requant else ''}]"

    # -- per call
    def _operand(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """X as the GEMM's [Mp, K] 8-bit operand (rows past M are zero: they change nothing)."""
        mp = max(-(-m // self.row_align) * self.row_align, 32 if not self.fp8 else 16)
        if self.input_quantized:
            a = x.reshape(m, self.k) if not self.conv else x.permute(0, 2, 3, 1).reshape(m, self.k)
            if mp != m:
                a = F.pad(a.view(torch.uint8) if self.fp8 else a, (0, 0, 0, mp - m))
                a = a.view(torch.float8_e4m3fn) if self.fp8 else a
            return a
        buf = torch.empty(mp * self.k, dtype=self.quant.out_dtype, device=x.device)
        self.quant(x, buf)
        if mp != m:
            buf.view(torch.uint8)[m * self.k:].zero_()
        return buf.view(mp, self.k)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv:
            if x.dim() != 4 or x.shape[1] != self.k:
                raise Unsupported(f"a QConv input of shape {list(x.shape)}")
            if not x.is_contiguous(memory_format=torch.channels_last):
                self._convert("input converted to channels-last for the 1x1 GEMM (an extra pass)")
                x = x.contiguous(memory_format=torch.channels_last)
        elif not x.is_contiguous():
            self._convert("non-contiguous input made contiguous (an extra pass)")
            x = x.contiguous()
        return x

    def run(self, ctx, inputs, attrs, out):
        if out is not None:
            raise Unsupported("writing into a given buffer")
        x = self._layout(inputs[0])
        m = x.numel() // self.k
        a = self._operand(x, m)
        want = _out_dtype(x, attrs)
        if self.fp8:
            y, done = self._fp8_gemm(a, m, want)
        else:
            y, done = torch._int_mm(a, self.wt)[:m], False
        y = y.view(*x.shape[:-1], self.n) if not self.conv else \
            y.view(x.shape[0], x.shape[2], x.shape[3], self.n).permute(0, 3, 1, 2)
        if done:
            return y
        epi = self.epi32 if self.per_tensor and y.dtype == torch.float32 else self.epi
        if epi is None:
            return y
        if y.dtype == want and self.per_tensor:
            return epi(y, inputs, out=y)  # float16 GEMM output: the steps run in place
        return epi(y, inputs, want)

    def _fp8_gemm(self, a, m, want) -> tuple[torch.Tensor, bool]:
        """(GEMM output [M, N], whether it is the finished result)."""
        if self.per_tensor and want in (torch.float16, torch.bfloat16):
            y = torch._scaled_mm(a, self.wt, scale_a=self.scale_a, scale_b=self.scale_b,
                                 bias=self.gemm_bias.get(want), out_dtype=want)[:m]
            return y, self.epi is None
        y = torch._scaled_mm(a, self.wt, scale_a=self.scale_a, scale_b=self.scale_b, out_dtype=torch.float32)[:m]
        return y, False


class _Fp8Layer(_Counting):
    """What the TMA kernel layers share (fp8 or int8 operands, ``fmt``): the layer's parts, the bound launch, and
    X's quantize pass."""

    def _parts(self, node, constants: dict, device: torch.device, fmt: str) -> tuple:
        """(weight, dequantizing scale, bias, launch keywords) for an 8-bit TMA kernel; NotApplicable for what
        they do not take. The scale is w_scale * sx as the own kernel's float32 product."""
        a = node.attrs
        self.fmt = _check_layer(node, fmt == "fp8e4m3", copy_ok=True)
        if self.fmt != fmt:
            raise NotApplicable(f"the layer's X is {self.fmt}")
        if int(a.get("x_zero_point", 0)):
            raise NotApplicable(f"X's zero point {a.get('x_zero_point')} (symmetric quantization only: the TMA "
                                "zero fill of the padding must be the real zero)")
        self.code = STORAGE[fmt]
        wq = _const(node, 1, constants, "weight")
        if wq.dtype != self.code:
            raise NotApplicable(f"a {wq.dtype} weight with {fmt} X")
        w_scale = _const(node, 2, constants, "weight scale").to(torch.float32).reshape(-1)
        bias = _const(node, 3, constants, "bias", optional=True)
        requant = _requant(a)
        if requant is not None and (requant[2] != fmt or requant[1]):
            raise NotApplicable(f"requantization to {requant[2]} with zero point {requant[1]}")
        scale = (w_scale * torch.tensor(float(a["x_scale"]), dtype=torch.float32)).to(device)
        kw = dict(steps=list(a.get("epilogue", [])), out_scale=None if requant is None else requant[0],
                  q_scale=_copy_scale(a))
        return wq, scale, None if bias is None else bias.to(device), kw

    def _bind(self, node, make_launch, device: torch.device) -> None:
        """self.launch = make_launch() (its shared memory checked on CUDA), the quantize pass, the name."""
        from ..backends.triton.quant import Quantize
        try:
            self.launch = make_launch()
            if device.type == "cuda":  # float outputs and residuals are 16-bit in the engines that use fp8
                self.launch.check_fits(1 if self.launch.out_scale is not None else 2,
                                       [2] * len(self.launch.residuals), device)
        except Unsupported as e:
            raise NotApplicable(str(e)) from None
        a = node.attrs
        self.input_quantized = bool(a.get("input_quantized"))
        self.quant = None if self.input_quantized else Quantize(float(a["x_scale"]), self.fmt, 0, "q")
        self.name = ("" if self.input_quantized else "triton_quant+") + self.launch.name


class Fp8GemmTriton(_Fp8Layer):
    """kiln::QLinear (fp8 or symmetric int8 X, per-tensor or per-channel weight scale) as [Triton quantize ->]
    one 8-bit GEMM kernel with the whole epilogue and the store (float, or 8-bit when the layer requantizes)
    fused."""

    def __init__(self, node, constants: dict, device: torch.device, config: tuple, fmt: str = "fp8e4m3"):
        super().__init__(node, _own_kernel(node))
        from ..backends.triton.fp8_gemm import Fp8GemmLaunch
        if node.op_type != "QLinear":
            raise NotApplicable("for kiln::QLinear (QConv: fp8_conv / int8_conv)")
        wq, scale, bias, kw = self._parts(node, constants, device, fmt)
        self._bind(node, lambda: Fp8GemmLaunch(wq.to(device), scale, bias, config=tuple(config), **kw), device)
        self.k, self.n = self.launch.k, self.launch.n

    def run(self, ctx, inputs, attrs, out):
        if out is not None:
            raise Unsupported("writing into a given buffer")
        x = inputs[0]
        if x.dim() < 2 or x.shape[-1] != self.k:
            raise Unsupported(f"an input of shape {list(x.shape)} for K={self.k}")
        if not x.is_contiguous():
            self._convert("non-contiguous input made contiguous (an extra pass)")
            x = x.contiguous()
        m = x.numel() // self.k
        if self.input_quantized:
            if x.dtype != self.code:
                raise Unsupported(f"an input_quantized layer got {x.dtype}")
            x8 = x.view(m, self.k)
        else:
            x8 = self.quant(x, torch.empty((m, self.k), dtype=self.code, device=x.device))
        y = self.launch(x8, [inputs[i] for i in self.launch.residuals], _out_dtype(x, attrs))
        if isinstance(y, tuple):
            return tuple(t.view(*x.shape[:-1], self.n) for t in y)
        return y.view(*x.shape[:-1], self.n)


# -- fp8 convolution ----------------------------------------------------------------------------------------------
class Fp8ConvTriton(_Fp8Layer):
    """kiln::QConv with fp8 or symmetric int8 X (``fmt``) as [Triton quantize ->] one 8-bit kernel with the whole
    epilogue and the store fused (float, or 8-bit when the layer requantizes, so that convolution chains pass
    8-bit activations): the TMA implicit-GEMM convolution (``kiln/backends/triton/fp8_conv.py``), or with
    ``gemm`` a 1x1 stride-1 layer as Kiln's 8-bit GEMM (``fp8_gemm.py``) of the channels-last [N*H*W, C] view."""

    def __init__(self, node, constants: dict, device: torch.device, config: tuple, gemm: bool,
                 fmt: str = "fp8e4m3"):
        super().__init__(node, _own_kernel(node))
        from ..backends.triton.fp8_conv import Fp8ConvLaunch
        from ..backends.triton.fp8_gemm import Fp8GemmLaunch
        if node.op_type != "QConv":
            raise NotApplicable("for kiln::QConv (QLinear: fp8_triton / int8_triton)")
        wq, scale, bias, kw = self._parts(node, constants, device, fmt)
        if wq.dim() != 4:
            raise NotApplicable(f"a {wq.dim() - 2}-d convolution (2-d only)")
        self.o, self.c = wq.shape[:2]
        if gemm and not _is_gemm_conv(node, wq):
            raise NotApplicable("the 8-bit GEMM takes 1x1, stride-1, unpadded convolutions")

        def make():
            if gemm:
                return Fp8GemmLaunch(wq.reshape(self.o, self.c).to(device), scale, bias, config=tuple(config), **kw)
            return Fp8ConvLaunch(wq.to(device), scale, bias, node.attrs, config=tuple(config), **kw)
        self._bind(node, make, device)
        self.gemm = gemm

    def _channels_last(self, t: torch.Tensor, what: str) -> torch.Tensor:
        if t.is_contiguous(memory_format=torch.channels_last):
            return t
        self._convert(f"{what} converted to channels-last (an extra pass)")
        return t.contiguous(memory_format=torch.channels_last)

    def run(self, ctx, inputs, attrs, out):
        if out is not None:
            raise Unsupported("writing into a given buffer")
        x = inputs[0]
        if x.dim() != 4 or x.shape[1] != self.c:
            raise Unsupported(f"an input of shape {list(x.shape)} for C={self.c}")
        x = self._channels_last(x, "the input")
        if self.input_quantized:
            if x.dtype != self.code:
                raise Unsupported(f"an input_quantized layer got {x.dtype}")
            x8 = x
        else:  # the same memory order as x: channels-last
            x8 = self.quant(x, torch.empty_like(x, dtype=self.code))
        res = [self._channels_last(inputs[i], "a residual") for i in self.launch.residuals]
        want = _out_dtype(x, attrs)
        if not self.gemm:
            return self.launch(x8, res, want)
        n, c, h, w = x8.shape
        y = self.launch(x8.permute(0, 2, 3, 1).reshape(n * h * w, c), [r.permute(0, 2, 3, 1) for r in res], want)
        as_nchw = lambda t: t.view(n, h, w, self.o).permute(0, 3, 1, 2)  # noqa: E731 - the channels-last view
        return tuple(as_nchw(t) for t in y) if isinstance(y, tuple) else as_nchw(y)


# -- convolution through float16 cuDNN -------------------------------------------------------------------------------
class QConvHalf(_Counting):
    """kiln::QConv as Triton quantize (to the 8-bit grid, stored in float16) -> float16 cuDNN convolution ->
    Triton dequantize + bias + epilogue.

    Exactness: every int8/uint8-minus-zero-point value (|v| <= 255) and every e4m3 value is exact in float16;
    weights are multiplied by 2**-e (exact: an integer |w| <= 127 or an e4m3 value stays representable) so that
    the largest possible sum, ``max|x| * max_o sum|W[o]|``, stays below 2**14 (no float16 overflow, room for
    Winograd transforms). Products are exact in cuDNN's float32 accumulator, and for integer data the partial
    sums are exact while that bound (unscaled) is below 2**24 - but the result is stored in float16, so each
    output is rounded to 11 significant bits (relative error <= 2**-11) before it is dequantized, and cuDNN
    may pick Winograd/FFT algorithms that are not exact. "Approximately exact": about one float16 ulp of the
    layer's float16 output; a requantized int8 output can differ by one step where a value sits on a
    rounding boundary (the tuner's exact check then rejects this tactic for that layer)."""

    def __init__(self, node, constants: dict, device: torch.device):
        super().__init__(node, _own_kernel(node))
        if node.op_type != "QConv":
            raise NotApplicable("for kiln::QConv")
        a = node.attrs
        self.fmt = _check_layer(node, None)
        if (_requant(a) or (0, 0, ""))[2] == "fp8e4m3":
            raise NotApplicable("an fp8 requantized output (fp8_conv writes it)")
        wq = _const(node, 1, constants, "weight").to(device)
        w_scale = _const(node, 2, constants, "weight scale").to(device=device, dtype=torch.float32).reshape(-1)
        bias = _const(node, 3, constants, "bias", optional=True)
        self.spatial = wq.dim() - 2
        if self.spatial not in _CONV:
            raise NotApplicable(f"{self.spatial}-d convolution")
        zp = int(a.get("x_zero_point", 0))
        if self.fmt == "fp8e4m3":
            xmax = FP8_MAX
        else:
            lo, hi = RANGES[self.fmt]
            xmax = float(max(abs(lo - zp), abs(hi - zp)))
        wf = wq.to(torch.float64)
        bound = xmax * float(wf.abs().reshape(wf.shape[0], -1).sum(1).max()) if wf.numel() else 0.0
        e = max(0, math.ceil(math.log2(bound / HALF_BOUND))) if bound > 0 else 0
        w16 = (wf * 2.0 ** -e).to(torch.float16)
        if not torch.equal(w16.double() * 2.0 ** e, wf):
            raise NotApplicable(f"the weights are not exact in float16 after scaling by 2**-{e}")
        fmt = torch.channels_last if a.get("channels_last") and self.spatial == 2 else torch.contiguous_format
        self.w16 = w16.contiguous(memory_format=fmt)
        self.zp = zp
        self.input_quantized = bool(a.get("input_quantized"))
        self.explicit, pads = _conv_pads(a, self.spatial)
        self.kw = dict(stride=a.get("strides", [1] * self.spatial), padding=pads,
                       dilation=a.get("dilations", [1] * self.spatial), groups=a.get("group", 1))
        from ..backends.triton.quant import DequantEpilogue, Quantize
        self.quant = None if self.input_quantized else Quantize(float(a["x_scale"]), self.fmt, zp, "float16")
        shape = (-1,) + (1,) * self.spatial
        s = (w_scale * float(a["x_scale"])).expand(wq.shape[0]) * 2.0 ** e  # times a power of two: exact
        b = None if bias is None else bias.to(device=device, dtype=torch.float32).reshape(shape)
        steps = list(a.get("epilogue", []))
        try:
            self.epi = DequantEpilogue(steps, s.contiguous().reshape(shape), b, _requant(a))
        except Unsupported as e_:
            raise NotApplicable(str(e_)) from None
        self.name = f"triton_quant+cudnn.conv{self.spatial}d_fp16+triton_epilogue[{'+'.join(steps) or 'none'}]"

    def run(self, ctx, inputs, attrs, out):
        if out is not None:
            raise Unsupported("writing into a given buffer")
        x = inputs[0]
        if self.input_quantized:
            xh = x.to(torch.float16)
            if self.zp:
                xh = xh.sub_(self.zp)
        else:
            if not _dense(x):
                self._convert("a strided input made contiguous (an extra pass)")
                x = x.contiguous()
            xh = self.quant(x, torch.empty_like(x, dtype=torch.float16))  # same strides as x: one flat pass
        if self.explicit is not None:
            xh = F.pad(xh, self.explicit)  # zero is the real zero here (zero point already subtracted)
        acc = _CONV[self.spatial](xh, self.w16, None, **self.kw)
        return self.epi(acc, inputs, _out_dtype(x, attrs))


# -- factories (registered in space.FACTORIES) -----------------------------------------------------------------------
def _wrap(layer):
    from ..ops.fused_cpu import Tactic
    return Tactic(layer.name, layer)


def _triton_ok(device) -> None:
    from ..backends import triton as kt
    ok, why = kt.available(device)
    if not ok:
        raise NotApplicable(why)


def int8_fast(node, params, constants, device):
    _require_cuda(device, "int8_fast")
    _triton_ok(device)
    return _wrap(QGemm(node, constants, device, fp8=False))


def fp8_fast(node, params, constants, device):
    _require_cuda(device, "fp8_fast")
    _triton_ok(device)
    if torch.cuda.get_device_capability(device) < (8, 9):
        raise NotApplicable("fp8 GEMMs need compute capability 8.9 or newer")
    return _wrap(QGemm(node, constants, device, fp8=True))


def _require_hopper_tma(device, name: str, what: str) -> None:
    """NotApplicable unless ``device`` runs the TMA kernels: CUDA, Triton, compute capability 9.0 or newer."""
    _require_cuda(device, name)
    _triton_ok(device)
    if torch.cuda.get_device_capability(device) < (9, 0):
        raise NotApplicable(f"{name}: the TMA {what} needs compute capability 9.0 (Hopper) or newer")


def _tma_gemm(fmt: str):
    """The factory of the 8-bit TMA GEMM tactic for ``fmt`` X ("fp8_triton", "int8_triton")."""
    def factory(node, params, constants, device):
        _require_hopper_tma(device, _TMA_NAMES[fmt][0], "GEMM")
        from ..backends.triton.fp8_gemm import CONFIGS
        return _wrap(Fp8GemmTriton(node, constants, device, tuple(params.get("config") or CONFIGS[0]), fmt))
    return factory


def _tma_conv(fmt: str):
    """The factory of the 8-bit TMA convolution tactic for ``fmt`` X ("fp8_conv", "int8_conv"); with ``gemm`` a
    1x1 stride-1 layer through the TMA GEMM."""
    def factory(node, params, constants, device):
        _require_hopper_tma(device, _TMA_NAMES[fmt][1], "convolution")
        gemm = bool(params.get("gemm"))
        if gemm:
            from ..backends.triton.fp8_gemm import CONFIGS
        else:
            from ..backends.triton.fp8_conv import CONFIGS
        return _wrap(Fp8ConvTriton(node, constants, device, tuple(params.get("config") or CONFIGS[0]), gemm, fmt))
    return factory


_TMA_NAMES = {"fp8e4m3": ("fp8_triton", "fp8_conv"), "int8": ("int8_triton", "int8_conv")}


def qconv_fp16(node, params, constants, device):
    _require_cuda(device, "qconv_fp16")
    _triton_ok(device)
    return _wrap(QConvHalf(node, constants, device))


FACTORIES = {"int8_fast": int8_fast, "fp8_fast": fp8_fast, "qconv_fp16": qconv_fp16,
             **{gemm: _tma_gemm(fmt) for fmt, (gemm, _) in _TMA_NAMES.items()},
             **{conv: _tma_conv(fmt) for fmt, (_, conv) in _TMA_NAMES.items()}}
