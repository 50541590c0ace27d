"""Quantized layers (domain ``kiln``) made by the quantization passes: INT8 and FP8 GEMM and convolution.

- ``kiln::QLinear(X, Wq[N,K], w_scale[N], B?[N], extra...)``: like kiln::Linear with an 8-bit weight.
- ``kiln::QConv(X, Wq[O,C/g,*k], w_scale[O], B?[O], extra...)``: like kiln::Conv (ONNX conv attributes).
- ``kiln::FakeQuant(X){scale, zero_point, dtype}``: a model's Q/DQ pair that no quantized layer absorbed.
- ``kiln::MaxPoolQuantize(X){MaxPool's attributes, q_scale, q_zero_point, q_dtype}``: quantize(MaxPool(X)), for
  a pool whose readers all quantize its output (kiln/passes/quantize_outputs.py).
- ``kiln::LayerNormQuantize(X, scale, B?){axis, epsilon, q_scale, q_zero_point, q_dtype} -> (Y, Yq)``: a
  LayerNormalization that also writes Y quantized, for the quantized layers reading Y (their
  ``input_quantized``); made by kiln/passes/quantize_norms.py. Yq = quantize(Y) of Y in its own type.

Attributes (plain data, stored in the engine):
  ``x_scale`` float, ``x_zero_point`` int (0), ``x_dtype`` "int8" | "uint8" | "fp8e4m3": how X is quantized;
  ``input_quantized`` 1 when X arrives already quantized (a producer requantized it in its epilogue);
  ``x_dynamic`` 1 (QLinear): X gets a scale per row (token) from the data at run time, not ``x_scale``;
  ``smooth_input`` I (QLinear): X is multiplied by input I (1/s per channel, SmoothQuant) before quantizing;
  ``epilogue`` as for kiln::Linear/Conv (``add:I`` / ``mul:I`` read float inputs I);
  ``out_scale``, ``out_zero_point``, ``out_dtype``: when present the layer requantizes its result
  (requantization in the epilogue), so the next quantized layer reads 8-bit data.
  ``q_scale``, ``q_zero_point``, ``q_dtype``: when present the layer has a second output, its float result
  (as stored) quantized, for the quantized layers among its readers (kiln/passes/quantize_outputs.py).

Arithmetic: ``y = ((Xq - zx) (*) Wq) * (sx * sw[n]) + B``, then the epilogue. The integer product is exact:
``torch._int_mm`` (int8 x int8 -> int32) for GEMM; convolution runs the int8 values through a float
convolution in float32 when ``K * max|x| * max|w| < 2**24`` (every partial sum is then an exactly
representable integer) and in float64 otherwise. On CUDA, GEMM operands are zero-padded to _int_mm's
shape rules (M > 16, K and N multiples of 8), which leaves the product unchanged; FP8 (E4M3) GEMM uses
``torch._scaled_mm`` on the GPU and an emulation (fp8 values in float32) on the CPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .fused import _conv_pads
from .fused_steps import apply_epilogue, layer_label
from .registry import KernelContext, OpSet

ops = OpSet("quantized")

RANGES = {"int8": (-128, 127), "uint8": (0, 255)}
STORAGE = {"int8": torch.int8, "uint8": torch.uint8, "fp8e4m3": torch.float8_e4m3fn}
FP8_MAX = 448.0
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


# -- quantize / dequantize --------------------------------------------------------------------------
def _divide(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x / scale, correctly rounded on every device: CUDA turns a Python-number divisor into a multiply by its
    reciprocal, which rounds some quotients differently (and so flips round-half-even ties)."""
    if x.is_cuda:
        return x / torch.full((), scale, dtype=x.dtype, device=x.device)  # a fill kernel: CUDA-graph safe
    return x / scale


def quantize(x: torch.Tensor, scale: float, zero_point: int = 0, dtype: str = "int8") -> torch.Tensor:
    """ONNX QuantizeLinear semantics: saturate(round_half_even(x / scale) + zero_point)."""
    if dtype == "fp8e4m3":
        return _divide(x.float(), scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    lo, hi = RANGES[dtype]
    q = torch.round(_divide(x.float(), scale))
    if zero_point:
        q = q + zero_point
    return q.clamp_(lo, hi).to(STORAGE[dtype])


def _centered(xq: torch.Tensor, zero_point: int) -> tuple[torch.Tensor, int]:
    """(int8 tensor, zero point) with the same real values: uint8 data is shifted by -128."""
    if xq.dtype == torch.uint8:
        return (xq.to(torch.int16) - 128).to(torch.int8), zero_point - 128
    return xq, zero_point


# -- integer products ----------------------------------------------------------------------------------
def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 [M,K] @ int8 [K,N] -> int32 [M,N], exact."""
    if a.device.type == "cuda":
        m, k = a.shape
        n = b.shape[1]
        # cuBLASLt's int8 GEMM rejected M=17 and M=24 on the H200 (M=32 and up, multiples of 32, ran): pad M.
        pm, pk, pn = -(-max(m, 32) // 32) * 32 - m, (-k) % 8, (-n) % 8
        if pm or pk or pn:  # zero rows/columns change nothing in the product
            a = F.pad(a, (0, pk, 0, pm))
            b = F.pad(b, (0, pn, 0, pk))
        return torch._int_mm(a.contiguous(), b)[:m, :n]
    if hasattr(torch, "_int_mm"):
        return torch._int_mm(a.contiguous(), b)
    return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.int32)  # exact below 2**53


def _exact_float(terms: int, xmax: int, wmax: int) -> torch.dtype:
    return torch.float32 if terms * xmax * wmax < (1 << 24) else torch.float64


def _meta_like(x: torch.Tensor, shape, attrs: dict):
    dtype = STORAGE[attrs["out_dtype"]] if "out_scale" in attrs else _float_out(x, attrs)
    y = torch.empty(shape, dtype=dtype, device=x.device)
    if "q_scale" in attrs:
        return y, torch.empty(shape, dtype=STORAGE[attrs["q_dtype"]], device=x.device)
    return y


def _float_out(x: torch.Tensor, attrs: dict) -> torch.dtype:
    if attrs.get("float_dtype"):
        return getattr(torch, attrs["float_dtype"])
    return x.dtype if x.dtype.is_floating_point and x.dtype != torch.float8_e4m3fn else torch.float32


def _input_q(x: torch.Tensor, attrs: dict, inputs: list) -> tuple[torch.Tensor, int]:
    dtype = attrs.get("x_dtype", "int8")
    zp = int(attrs.get("x_zero_point", 0))
    if attrs.get("input_quantized"):
        xq = x
    else:
        if "smooth_input" in attrs:  # SmoothQuant: x / s per input channel (W was multiplied by s)
            x = x.float() * inputs[attrs["smooth_input"]].float()
        xq = quantize(x, float(attrs["x_scale"]), zp, dtype)
    if dtype == "fp8e4m3":
        return xq, 0
    return _centered(xq, zp)


def _finish(y: torch.Tensor, x: torch.Tensor, inputs: list, attrs: dict) -> torch.Tensor:
    y = apply_epilogue(y, attrs.get("epilogue", []), inputs)
    if "out_scale" in attrs:
        return quantize(y, float(attrs["out_scale"]), int(attrs.get("out_zero_point", 0)), attrs["out_dtype"])
    y = y.to(_float_out(x, attrs))
    if "q_scale" in attrs:  # the second output: Y as stored, quantized (kiln/passes/quantize_outputs.py)
        return y, quantize(y, float(attrs["q_scale"]), int(attrs.get("q_zero_point", 0)), attrs["q_dtype"])
    return y


@ops.op("FakeQuant", domain="kiln")
def fake_quant(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    """A Q/DQ pair of a model, run in float: (quantize(x) - zero_point) * scale, in x's type."""
    x = inputs[0]
    if x.device.type == "meta":
        return torch.empty_like(x)
    s, zp = float(attrs["scale"]), int(attrs.get("zero_point", 0))
    q = quantize(x, s, zp, attrs.get("dtype", "int8"))
    return ((q.to(torch.float32) - zp) * s).to(x.dtype)


@ops.op("LayerNormQuantize", domain="kiln")
def layer_norm_quantize(ctx: KernelContext, inputs: list, attrs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNormalization Y, and Y quantized (x_scale / zero point / 8-bit type of the layers reading it)."""
    from .norm import layer_norm
    y = layer_norm(inputs, attrs)
    if y.device.type == "meta":
        return y, torch.empty(y.shape, dtype=STORAGE[attrs["q_dtype"]], device=y.device)
    return y, quantize(y, float(attrs["q_scale"]), int(attrs.get("q_zero_point", 0)), attrs["q_dtype"])


@ops.op("MaxPoolQuantize", domain="kiln")
def max_pool_quantize(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    """MaxPool (its ONNX attributes) of x, quantized (q_scale / q_zero_point / q_dtype): made where every reader
    of the pool quantizes its output (kiln/passes/quantize_outputs.py)."""
    from .pool import max_pool
    pool_attrs = {k: v for k, v in attrs.items() if not k.startswith("q_")}
    y = max_pool(ctx, inputs, pool_attrs)
    if y.device.type == "meta":
        return torch.empty(y.shape, dtype=STORAGE[attrs["q_dtype"]], device=y.device)
    return quantize(y, float(attrs["q_scale"]), int(attrs.get("q_zero_point", 0)), attrs["q_dtype"])


# -- GEMM ------------------------------------------------------------------------------------------------
def kernel_label(node) -> str:
    """How the build report names a quantized layer's kernel (its bias and epilogue steps included)."""
    a = node.attrs
    fp8 = a.get("x_dtype") == "fp8e4m3"
    if node.op_type == "QLinear":
        base = "fp8.scaled_mm" if fp8 else "int8.int_mm"
    else:
        base = f"{'fp8' if fp8 else 'int8'}.conv{node.inputs[1].const.dim() - 2 if node.inputs[1].const is not None else 2}d"
    if a.get("input_quantized"):
        base += f"[{'fp8' if fp8 else 'int8'} in]"
    if "out_scale" in a:
        base += "[requant out]"
    return layer_label(base, node, bias_slot=3)


@ops.op("QLinear", domain="kiln", label=kernel_label)
def qlinear(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    """X @ Wq^T in 8 bits (int8 exact, or fp8 e4m3), dequantized, + bias, epilogue, optional requantize."""
    x, wq, w_scale = inputs[0], inputs[1], inputs[2]
    b = inputs[3] if len(inputs) > 3 else None
    n, k = wq.shape
    if x.device.type == "meta":
        return _meta_like(x, (*x.shape[:-1], n), attrs)
    if attrs.get("x_dynamic"):
        return _finish(_dynamic_linear(x, wq, w_scale, b, attrs, inputs), x, inputs, attrs)
    sx = float(attrs["x_scale"])
    xq, zp = _input_q(x, attrs, inputs)
    lead = xq.shape[:-1]
    a = xq.reshape(-1, k)
    if attrs.get("x_dtype") == "fp8e4m3":
        acc = fp8_mm(a, wq, sx, w_scale)
    else:
        acc = int8_mm(a, wq.t())
        if zp:
            acc = acc - zp * wq.to(torch.int32).sum(1)
        acc = acc.to(torch.float32) * (w_scale.to(torch.float32) * sx)
    if b is not None:
        acc = acc + b.to(torch.float32)
    return _finish(acc.reshape(*lead, n), x, inputs, attrs)


def _dynamic_linear(x, wq, w_scale, b, attrs, inputs) -> torch.Tensor:
    """Per-row (per-token) symmetric int8 scales taken from the data at run time."""
    n, k = wq.shape
    xf = x.float()
    if "smooth_input" in attrs:
        xf = xf * inputs[attrs["smooth_input"]].float()
    a = xf.reshape(-1, k)
    s = (a.abs().amax(1, keepdim=True) / 127.0).clamp_(min=1e-12)
    xq = torch.round(a / s).clamp_(-127, 127).to(torch.int8)
    y = int8_mm(xq, wq.t()).to(torch.float32) * s * w_scale.to(torch.float32)
    if b is not None:
        y = y + b.to(torch.float32)
    return y.reshape(*x.shape[:-1], n)


def fp8_mm(a: torch.Tensor, wq: torch.Tensor, sx: float, w_scale: torch.Tensor) -> torch.Tensor:
    """fp8 [M,K] @ fp8 [N,K]^T with per-tensor scales -> float32. ``torch._scaled_mm`` on CUDA (Hopper+)."""
    m, k = a.shape
    n = wq.shape[0]
    sw = w_scale.reshape(-1)
    if a.device.type == "cuda" and k % 16 == 0 and n % 16 == 0:
        pm = (-m) % 16
        ap = F.pad(a.view(torch.uint8), (0, 0, 0, pm)).view(torch.float8_e4m3fn) if pm else a
        sa = torch.full((), sx, device=a.device, dtype=torch.float32)  # a fill kernel: CUDA-graph safe
        per_channel = sw.numel() > 1  # tensor-wise scales in the GEMM, per-channel ones after it
        sb = torch.ones((), device=a.device) if per_channel else sw.to(torch.float32).reshape(())
        y = torch._scaled_mm(ap.contiguous(), wq.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32)[:m]
        return y * sw.to(torch.float32) if per_channel else y
    y = a.to(torch.float32) @ wq.to(torch.float32).t()
    return y * (sw.to(torch.float32) * sx)


# -- convolution ---------------------------------------------------------------------------------------
@ops.op("QConv", domain="kiln", label=kernel_label)
def qconv(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    """Convolution of int8 activations and per-output-channel int8 weights, exact integer sums."""
    x, wq, w_scale = inputs[0], inputs[1], inputs[2]
    b = inputs[3] if len(inputs) > 3 else None
    spatial = wq.dim() - 2
    explicit, pads = _conv_pads(attrs, spatial)
    conv = _CONV[spatial]
    kw = dict(stride=attrs.get("strides", [1] * spatial), padding=pads,
              dilation=attrs.get("dilations", [1] * spatial), groups=attrs.get("group", 1))
    if x.device.type == "meta":
        xf = F.pad(x.float(), explicit) if explicit is not None else x.float()
        shape = conv(xf, torch.empty(wq.shape, device="meta"), None, **kw).shape
        return _meta_like(x, shape, attrs)
    sx = float(attrs["x_scale"])
    xq, zp = _input_q(x, attrs, inputs)
    terms = math.prod(wq.shape[1:])
    if attrs.get("x_dtype") == "fp8e4m3":
        ct = torch.float32
        xs, wf = xq.to(ct), wq.to(ct)
    else:
        xmax = 255 if zp else 128
        ct = _exact_float(terms, xmax, int(attrs.get("w_absmax", 127)))
        xs = xq.to(ct) - zp if zp else xq.to(ct)  # the real zero is 0 here, so zero padding is exact
        wf = wq.to(ct)
    if explicit is not None:
        xs = F.pad(xs, explicit)
    if attrs.get("channels_last") and xs.dim() == 4:  # the layout pass chose NHWC: the output follows the input
        xs = xs.contiguous(memory_format=torch.channels_last)
    if xs.device.type == "cuda" and ct == torch.float32:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            acc = conv(xs, wf, None, **kw)
    else:
        acc = conv(xs, wf, None, **kw)
    scale = (w_scale.to(torch.float32) * sx).reshape(1, -1, *([1] * spatial))
    y = acc.to(torch.float32) * scale
    if b is not None:
        y = y + b.to(torch.float32).reshape(1, -1, *([1] * spatial))
    return _finish(y, x, inputs, attrs)
