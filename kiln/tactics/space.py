"""Kiln's tactics: for each layer kind its candidate implementations as rows of data, and their factories.

A candidate is a :class:`Choice` (choice.py: what an engine stores, a cache records and a replay file lists).
Turning a choice into a kernel is ``make(choice, node, constants, device)``: the factory named by
``choice.name`` builds a :class:`Tactic` (``name`` + ``kernel`` with the ordinary kernel signature) from the
node's stored description and its bound weights. ``"torch"`` is every layer's own kernel, which is also the
reference the tuner checks every other candidate against.

The table: (domain, op type) -> :class:`Row` (name, params, device type or "any", min level). The optimization
level picks the rows (2: few, 3: default, 4-5: every Triton GEMM configuration). ``DEFAULT`` is the
:class:`TacticLibrary` (library.py) of this table and these factories; ``SPACE`` and ``FACTORIES`` are its
read-only views. To add candidates, make a new library (``DEFAULT.with_rows(...).with_factories(...)``) and
pass it to ``kiln.build(..., tactics=)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.fused import _conv_pads, cudnn_conv_into, fused_attention
from ..ops.fused_steps import Activation, AddInput, apply_steps, parse_epilogue
from ..ops.fused_cpu import Tactic
from .choice import TORCH, Choice, NotApplicable
from .library import Factory, Row, TacticLibrary, triton_factory

__all__ = ["DEFAULT", "SPACE", "FACTORIES", "Choice", "NotApplicable", "TORCH", "Row", "Tactic", "TacticLibrary",
           "candidates", "default_choice", "make"]


# -- the table -----------------------------------------------------------------------------------------------
_ROWS = [Row("torch", {}, "any", 0), Row("triton", {}, "cuda", 2)]


def _tma_gemm_rows(name: str) -> list:
    """The 8-bit TMA GEMM's rows (configs = fp8_gemm.CONFIGS, the level each joins at)."""
    return [Row(name, {"config": [128, 128, 128, 8, 8, 4]}, "cuda", 2),
            Row(name, {"config": [128, 256, 128, 8, 8, 3]}, "cuda", 2),
            Row(name, {"config": [256, 128, 128, 8, 8, 3]}, "cuda", 3),
            Row(name, {"config": [128, 256, 64, 8, 8, 4]}, "cuda", 3),
            Row(name, {"config": [256, 64, 64, 8, 4, 4]}, "cuda", 3),
            Row(name, {"config": [128, 128, 64, 8, 4, 2, 2]}, "cuda", 3),
            Row(name, {"config": [256, 64, 64, 8, 4, 2, 2]}, "cuda", 3)]


def _tma_conv_rows(name: str) -> list:
    """The 8-bit TMA convolution's rows: its own configs (fp8_conv.CONFIGS), then 1x1 stride-1 layers through the
    8-bit GEMM (``gemm``: fp8_gemm.CONFIGS)."""
    return [Row(name, {"config": [128, 128, 8, 8, 4]}, "cuda", 2),
            Row(name, {"config": [256, 128, 8, 8, 3]}, "cuda", 2),
            Row(name, {"config": [64, 64, 8, 4, 4]}, "cuda", 2),
            Row(name, {"config": [128, 64, 8, 8, 4]}, "cuda", 3),
            Row(name, {"config": [64, 64, 8, 8, 4, 256]}, "cuda", 2),
            Row(name, {"config": [128, 64, 8, 8, 4, 256]}, "cuda", 2),
            Row(name, {"config": [64, 64, 8, 4, 4, 128, 2]}, "cuda", 2),
            Row(name, {"config": [128, 128, 128, 8, 8, 4], "gemm": 1}, "cuda", 2),
            Row(name, {"config": [128, 256, 128, 8, 8, 3], "gemm": 1}, "cuda", 2),
            Row(name, {"config": [256, 128, 128, 8, 8, 3], "gemm": 1}, "cuda", 2),
            Row(name, {"config": [128, 256, 64, 8, 8, 4], "gemm": 1}, "cuda", 3),
            Row(name, {"config": [256, 64, 64, 8, 4, 4], "gemm": 1}, "cuda", 2),
            Row(name, {"config": [128, 128, 64, 8, 4, 2, 2], "gemm": 1}, "cuda", 2),
            Row(name, {"config": [256, 64, 64, 8, 4, 2, 2], "gemm": 1}, "cuda", 2)]


_TABLE: dict[tuple[str, str], list[Row]] = {
    ("kiln", "Conv"): [
        Row("torch", {}, "any", 0),
        Row("onednn", {}, "cpu", 0),
        Row("onednn_gemm", {}, "cpu", 2),  # 1x1 convs as a oneDNN matmul on the NHWC [N*H*W, C] view
        Row("aten", {"layout": "nchw"}, "cpu", 2),  # small layers: torch's NCHW convolution (see _aten)
        Row("cudnn", {"layout": "nchw"}, "cuda", 2),
        Row("cudnn", {"layout": "nhwc"}, "cuda", 2),
        Row("cudnn_fused", {}, "cuda", 2),  # torch.cudnn_convolution_relu / _add_relu (frozen-conv fusion)
        Row("triton_epilogue", {}, "cuda", 3),
    ],
    ("kiln", "Linear"): [
        Row("torch", {}, "any", 0),  # F.linear: cuBLASLt with the bias in its epilogue
        Row("onednn", {}, "cpu", 0),
        Row("cublaslt", {}, "cuda", 2),  # addmm with bias + relu / tanh-GELU in cuBLASLt's epilogue
        Row("triton_epilogue", {}, "cuda", 2),
        Row("triton_gemm", {"config": "*"}, "cuda", 2),  # expanded to gemm.CONFIGS (by level)
    ],
    ("kiln", "Attention"): [
        Row("torch", {}, "any", 0),
        Row("sdpa", {"backend": "flash"}, "cuda", 2),
        Row("sdpa", {"backend": "efficient"}, "cuda", 2),
        Row("sdpa", {"backend": "cudnn"}, "cuda", 3),
        Row("sdpa", {"backend": "math"}, "cuda", 4),
        Row("unfused", {}, "any", 3),
    ],
    ("kiln", "QLinear"): [  # kiln/tactics/quantized.py: Triton quantize -> 8-bit GEMM -> Triton epilogue
        Row("torch", {}, "any", 0),
        Row("int8_fast", {}, "cuda", 2),
        Row("fp8_fast", {}, "cuda", 2),
        # Kiln's 8-bit GEMM with the epilogue fused (kiln/backends/triton/fp8_gemm.py), configs = fp8_gemm.CONFIGS;
        # fp8 X, and symmetric int8 X (each row applies to one of the two)
        *_tma_gemm_rows("fp8_triton"), *_tma_gemm_rows("int8_triton"),
    ],
    ("kiln", "QConv"): [  # 1x1 convs as the GEMM above; the others through a float16 cuDNN convolution
        Row("torch", {}, "any", 0),
        Row("int8_fast", {}, "cuda", 2),
        Row("fp8_fast", {}, "cuda", 2),
        Row("qconv_fp16", {}, "cuda", 2),
        # Kiln's TMA implicit-GEMM convolution (kiln/backends/triton/fp8_conv.py, configs = its CONFIGS) and, for
        # 1x1 stride-1 layers, the 8-bit GEMM (fp8_gemm.CONFIGS): fp8 X, and symmetric int8 X
        *_tma_conv_rows("fp8_conv"), *_tma_conv_rows("int8_conv"),
        # Triton implicit-GEMM on 8-bit tensor cores (kiln/backends/triton/qconv.py), configs = qconv.CONFIGS
        Row("triton_qconv", {"config": [128, 128, 64, 8, 8, 4]}, "cuda", 2),
        Row("triton_qconv", {"config": [128, 64, 64, 8, 4, 4]}, "cuda", 2),
        Row("triton_qconv", {"config": [128, 256, 64, 8, 8, 3]}, "cuda", 3),
        Row("triton_qconv", {"config": [256, 128, 64, 8, 8, 3]}, "cuda", 3),
        Row("triton_qconv", {"config": [128, 128, 128, 8, 8, 3]}, "cuda", 4),
        Row("triton_qconv", {"config": [64, 128, 128, 8, 4, 4]}, "cuda", 4),
        Row("triton_qconv", {"config": [128, 128, 64, 8, 8, 4], "quant_in": "torch"}, "cuda", 4),
    ],
    ("", "MaxPool"): [Row("torch", {}, "any", 0), Row("triton_pool", {}, "cuda", 2)],  # backends/triton/pool.py
    # 2/4/8-bit weights dequantized in registers (backends/triton/nbits.py), configs = nbits.CONFIGS
    ("com.microsoft", "MatMulNBits"): [
        Row("torch", {}, "any", 0),
        Row("triton_nbits", {"config": [16, 64, 64, 4, 16, 4, 4]}, "cuda", 2),
        Row("triton_nbits", {"config": [32, 64, 64, 4, 32, 4, 4]}, "cuda", 2),
        Row("triton_nbits", {"config": [64, 128, 32, 8, 16, 8, 4]}, "cuda", 3),
        Row("triton_nbits", {"config": [32, 64, 64, 4, 64, 2, 8]}, "cuda", 3),
        Row("triton_nbits", {"config": [64, 128, 32, 8, 8, 16, 4]}, "cuda", 2),
        Row("triton_nbits", {"config": [64, 128, 32, 8, 16, 16, 8]}, "cuda", 3),
    ],
    ("kiln", "MaxPoolQuantize"): [Row("torch", {}, "any", 0), Row("triton_pool", {}, "cuda", 2)],
    ("kiln", "Elementwise"): list(_ROWS),
    ("", "Softmax"): list(_ROWS),
    ("", "LayerNormalization"): list(_ROWS),
    ("kiln", "LayerNormQuantize"): list(_ROWS),
    ("", "RMSNormalization"): list(_ROWS),
    **{("", op): list(_ROWS) for op in ("ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceMax", "ReduceMin")},
}


def _gemm_configs(level: int) -> list[tuple]:
    try:
        from ..backends.triton.gemm import CONFIGS
    except Exception:  # noqa: BLE001 - no triton: no GEMM template
        return []
    if level <= 2:
        return list(CONFIGS[:1])
    if level == 3:
        return list(CONFIGS[:3])
    return list(CONFIGS)


def _expand(name: str, params: dict, level: int) -> list[dict]:
    """A row whose ``config`` is "*": one candidate per Triton GEMM block config of ``level``."""
    return [{**params, "config": list(c)} for c in _gemm_configs(level)] if params.get("config") == "*" else [params]


def candidates(node, device: torch.device, level: int = 3) -> list[Choice]:
    """The choices to time for ``node`` at ``level`` in the DEFAULT library (``TacticLibrary.candidates``)."""
    return DEFAULT.candidates(node, device, level)


def default_choice(node, device: torch.device) -> Choice:
    """What a layer runs without tuning: oneDNN for CPU Conv/Linear (when it takes the layer), else torch;
    1x1 convolutions without a residual add as a oneDNN matmul (see fused_cpu.prefers_gemm)."""
    if device.type == "cpu" and (node.domain, node.op_type) in (("kiln", "Conv"), ("kiln", "Linear")):
        from ..ops import fused_cpu
        if node.op_type == "Conv" and fused_cpu._available() and fused_cpu.prefers_gemm(node):
            return Choice("onednn_gemm")
        return Choice("onednn")
    return TORCH


# -- factories: Choice -> Tactic -------------------------------------------------------------------------------
def make(choice: Choice, node, constants: dict, device: torch.device, registry=None) -> Tactic | None:
    """The tactic for ``choice`` on ``node`` in the DEFAULT library (``TacticLibrary.make``)."""
    return DEFAULT.make(choice, node, constants, device)


def _onednn(tactic: str) -> Factory:
    """The factory of a oneDNN CPU tactic family of kiln/ops/fused_cpu.py ("onednn", "onednn_gemm")."""
    def factory(node, params, constants, device) -> Tactic:
        from ..ops import fused_cpu
        if device.type != "cpu" or not fused_cpu._available():
            raise NotApplicable("oneDNN tactics need the CPU and a torch with mkldnn ops")
        choose = fused_cpu._CHOOSERS[tactic].get((node.domain, node.op_type))
        t = choose(node, constants) if choose is not None else None
        if t is None:
            raise NotApplicable(f"{tactic} does not take this layer (shape, attributes, dtype or a non-constant "
                                f"weight)")
        return t
    return factory


def _weights(node, constants):
    w = constants.get(node.inputs[1].id) if node.inputs[1] is not None else None
    b_v = node.inputs[2] if len(node.inputs) > 2 else None
    b = None if b_v is None else constants.get(b_v.id)
    if w is None or (b_v is not None and b is None):
        raise NotApplicable("the weight or bias is not a constant")
    return w, b


def _cudnn(node, params, constants, device) -> Tactic:
    """torch's convolution with activations and weight in the layout ``params["layout"]`` (nchw | nhwc).
    The output is returned in the layer's own layout (the conversion is part of the candidate's time), so
    the layers around it see what they were tuned with."""
    w, b = _weights(node, constants)
    if w.dim() != 4:
        raise NotApplicable("2-D convolutions only")
    fmt = torch.channels_last if params.get("layout") == "nhwc" else torch.contiguous_format
    w = w.contiguous(memory_format=fmt)
    attrs = node.attrs
    explicit, pads = _conv_pads(attrs, 2)
    strides, dil, groups = list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1])), \
        int(attrs.get("group", 1))
    epi = parse_epilogue(attrs.get("epilogue", []))
    own = torch.channels_last if attrs.get("channels_last") else torch.contiguous_format

    def kernel(ctx, inputs, attrs, out=None):
        x = inputs[0] if explicit is None else F.pad(inputs[0], explicit)
        x = x.contiguous(memory_format=fmt)
        if out is not None and fmt is own and cudnn_conv_into(out, x, w, b, strides, pads, dil, groups):
            y = out
        else:
            y = F.conv2d(x, w, b, strides, pads, dil, groups)
        if fmt is not own:
            y = y.contiguous(memory_format=own)
        return apply_steps(y, epi, inputs) if epi else y
    kernel.accepts_out = ("cuda",) if fmt is own else ()
    return Tactic("cudnn", kernel)


def _aten(node, params, constants, device) -> Tactic:
    """CPU: torch's convolution on an NCHW copy of the input, the output returned in the layer's own layout.
    Why: every oneDNN call (Kiln's onednn tactics, and torch's convolution of a channels-last tensor) builds its
    primitive descriptor again, a fixed cost small layers cannot hide: on the AVX2 EPYC VM (2026-12-07) an
    8->8 channel 1x1 convolution took 57-62 us per call whatever its size, of which oneDNN's verbose log counts
    3-4 us of execution. For NCHW input torch takes its own im2col+GEMM path (8-18 us there) on small 1x1
    layers run on one thread and on small single-image maps, and oneDNN elsewhere; so the gain depends on the
    layer and its thread count, and the two layout conversions are part of the candidate's time: the tuner
    keeps it only where it wins."""
    if device.type != "cpu":
        raise NotApplicable("the CPU's own-layout candidate (CUDA: cudnn)")
    if params != {"layout": "nchw"}:
        raise NotApplicable(f"aten takes layout=nchw, not {params}")
    t = _cudnn(node, params, constants, device)
    return Tactic("aten", t.kernel)


_RELU, _GELU_TANH = Activation("relu"), Activation("gelu_tanh")  # the steps cuDNN / cuBLASLt fuse


def _cudnn_fused(node, params, constants, device) -> Tactic:
    """conv+bias+relu or conv+bias+add+relu as one cuDNN call (what torch's frozen-conv fusion uses)."""
    if device.type != "cuda":
        raise NotApplicable("cuDNN runs on CUDA devices")
    w, b = _weights(node, constants)
    if w.dim() != 4:
        raise NotApplicable("2-D convolutions only")
    epi = parse_epilogue(node.attrs.get("epilogue", []))
    if epi == (_RELU,):
        add = None
    elif len(epi) == 2 and isinstance(epi[0], AddInput) and epi[1] == _RELU:
        add = epi[0].input
    else:
        raise NotApplicable(f"epilogue {[s.to_json() for s in epi]} is neither relu nor add+relu")
    attrs = node.attrs
    explicit, pads = _conv_pads(attrs, 2)
    strides, dil, groups = list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1])), \
        int(attrs.get("group", 1))
    fmt = torch.channels_last if attrs.get("channels_last") else torch.contiguous_format
    w = w.contiguous(memory_format=fmt)

    def kernel(ctx, inputs, attrs):
        x = inputs[0] if explicit is None else F.pad(inputs[0], explicit)
        x = x.contiguous(memory_format=fmt)
        if add is None:
            return torch.cudnn_convolution_relu(x, w, b, strides, pads, dil, groups)
        z = inputs[add].contiguous(memory_format=fmt)
        return torch.cudnn_convolution_add_relu(x, w, z, 1.0, b, strides, pads, dil, groups)
    return Tactic("cudnn_fused", kernel)


@triton_factory
def _triton(node, params, constants, device, on_cpu: bool = False) -> Tactic:
    from ..backends import triton as kt
    layer, why = kt.try_compile_layer(node, device, on_cpu=on_cpu)
    if layer is None:
        raise NotApplicable(why)
    return Tactic(layer.name, layer)


@triton_factory
def _triton_epilogue(node, params, constants, device, on_cpu: bool = False) -> Tactic:
    if (node.domain, node.op_type) not in (("kiln", "Conv"), ("kiln", "Linear")):
        raise NotApplicable("a library call + Triton epilogue is for kiln::Conv / kiln::Linear")
    return _triton(node, params, constants, device, on_cpu)


@triton_factory
def _triton_gemm(node, params, constants, device, on_cpu: bool = False) -> Tactic:
    from ..backends import triton as kt
    ok, why = kt.available(device, on_cpu)
    if not ok:
        raise NotApplicable(why)
    from ..backends.triton.layers import GemmLayer
    from ..ops import default_registry
    fallback = default_registry().get("kiln", "Linear").kernel
    try:
        layer = GemmLayer(node, fallback, tuple(params["config"]))
    except kt.Unsupported as e:
        raise NotApplicable(str(e)) from None
    return Tactic(layer.name, layer)


def _cublaslt(node, params, constants, device) -> Tactic:
    """x @ W^T + b through ``torch._addmm_activation``: cuBLASLt's epilogue adds the bias and applies a
    leading relu or tanh-GELU step (Inductor's addmm fusion); later steps run as the plain epilogue."""
    if device.type != "cuda":
        raise NotApplicable("cuBLASLt runs on CUDA devices")
    w, b = _weights(node, constants)
    if b is None or b.dim() != 1 or w.dim() != 2:
        raise NotApplicable("needs a 1-D bias and a 2-D weight")
    epi = parse_epilogue(node.attrs.get("epilogue", []))
    act = epi[0] if epi and epi[0] in (_RELU, _GELU_TANH) else None
    rest = epi[1:] if act else epi
    if act is None:
        raise NotApplicable("no relu or tanh-GELU step to fuse (torch's F.linear is the same call)")
    wt = w.t()
    use_gelu = act == _GELU_TANH

    def kernel(ctx, inputs, attrs, out=None):
        x = inputs[0]
        if out is not None and out.is_contiguous() and out.dtype == x.dtype:
            torch._addmm_activation(b, x.reshape(-1, x.shape[-1]), wt, use_gelu=use_gelu,
                                    out=out.view(-1, w.shape[0]))
            y = out
        else:
            y = torch._addmm_activation(b, x.reshape(-1, x.shape[-1]), wt, use_gelu=use_gelu)
            y = y.reshape(*x.shape[:-1], w.shape[0])
        return apply_steps(y, rest, inputs) if rest else y
    kernel.accepts_out = ("cuda",)
    return Tactic("cublaslt", kernel)


def _sdpa(node, params, constants, device) -> Tactic:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "math": SDPBackend.MATH, "cudnn": getattr(SDPBackend, "CUDNN_ATTENTION", None)}.get(params.get("backend"))
    if backend is None:
        raise NotApplicable(f"no SDPA backend {params.get('backend')!r} in this torch")

    def kernel(ctx, inputs, attrs):
        with sdpa_kernel([backend]):
            return fused_attention(ctx, inputs, attrs)
    return Tactic("sdpa", kernel)


def _unfused(node, params, constants, device) -> Tactic:
    """softmax(Q @ Kt * scale + mask) @ V as two batched GEMMs and a softmax (fp32 softmax for 16-bit types)."""
    scale = float(node.attrs["scale"])

    def kernel(ctx, inputs, attrs):
        q, kt_, v = inputs[0], inputs[1], inputs[2]
        mask = inputs[3] if len(inputs) > 3 else None
        heads = attrs.get("heads")
        if heads:
            q, k, v = (t.unflatten(-1, (int(heads), -1)).transpose(1, 2) for t in (q, kt_, v))
            kt_ = k.transpose(-1, -2)
        s = torch.matmul(q, kt_) * scale
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.to(s.dtype)
        p = torch.softmax(s.float(), dim=-1).to(q.dtype)
        y = torch.matmul(p, v)
        if attrs.get("nan_to_zero"):
            y = torch.nan_to_num(y, nan=0.0, posinf=float("inf"), neginf=float("-inf"))
        if heads:
            y = y.transpose(1, 2).flatten(-2)
        return y
    return Tactic("unfused", kernel)


_FACTORIES: dict[str, Factory] = {
    "onednn": _onednn("onednn"), "onednn_gemm": _onednn("onednn_gemm"),
    "cublaslt": _cublaslt, "cudnn": _cudnn, "aten": _aten, "cudnn_fused": _cudnn_fused, "triton": _triton,
    "triton_epilogue": _triton_epilogue, "triton_gemm": _triton_gemm, "sdpa": _sdpa, "unfused": _unfused,
}


def _quantized(name: str) -> Factory:
    def factory(node, params, constants, device):
        from . import quantized  # imported on first use: it pulls in the Triton backend
        return quantized.FACTORIES[name](node, params, constants, device)
    return factory


_FACTORIES.update({name: _quantized(name) for name in ("int8_fast", "fp8_fast", "fp8_triton", "fp8_conv", "int8_triton",
                                                      "int8_conv", "qconv_fp16")})


@triton_factory
def _triton_qconv(node, params, constants, device, on_cpu: bool = False) -> Tactic:
    from .qconv import qconv_tactic  # imported on first use: it pulls in the Triton backend
    return qconv_tactic(node, params, constants, device, on_cpu=on_cpu)


_FACTORIES["triton_qconv"] = _triton_qconv


@triton_factory
def _triton_pool(node, params, constants, device, on_cpu: bool = False) -> Tactic:
    from ..backends import triton as kt
    ok, why = kt.available(device, on_cpu)
    if not ok:
        raise NotApplicable(why)
    if (node.domain or "", node.op_type) not in (("", "MaxPool"), ("kiln", "MaxPoolQuantize")):
        raise NotApplicable("the Triton pool takes MaxPool / kiln::MaxPoolQuantize")
    if any(o is not None for o in node.outputs[1:]):
        raise NotApplicable("the Indices output")
    from ..backends.triton.ops import Unsupported
    from ..backends.triton.pool import MaxPoolLayer
    from ..ops import default_registry
    try:
        layer = MaxPoolLayer(node, default_registry().get(node.domain or "", node.op_type).kernel)
    except Unsupported as e:
        raise NotApplicable(str(e)) from None
    return Tactic(layer.name, layer)


_FACTORIES["triton_pool"] = _triton_pool


@triton_factory
def _triton_nbits(node, params, constants, device, on_cpu: bool = False) -> Tactic:
    from ..backends import triton as kt
    ok, why = kt.available(device, on_cpu)
    if not ok:
        raise NotApplicable(why)
    from ..backends.triton.nbits import NBitsLayer
    from ..backends.triton.ops import Unsupported
    from ..ops import default_registry
    try:
        layer = NBitsLayer(node, default_registry().get(node.domain, node.op_type).kernel, constants,
                           tuple(params["config"]))
    except Unsupported as e:
        raise NotApplicable(str(e)) from None
    return Tactic(layer.name, layer)


_FACTORIES["triton_nbits"] = _triton_nbits

DEFAULT = TacticLibrary(_TABLE, _FACTORIES, _expand)
SPACE = DEFAULT.space  # read-only: (domain, op type) -> rows
FACTORIES = DEFAULT.factories  # read-only: tactic name -> factory
