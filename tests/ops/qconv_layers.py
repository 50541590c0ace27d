"""kiln::QConv layers for the 8-bit TMA kernel tests, fp8 (e4m3) or int8 by ``fmt``: the node and its constants,
its inputs in the kernel's order, and the float64 arithmetic the layer stands for. ``conv_node`` makes the CPU
tests' random codes; ``cuda_layer`` quantizes a random float weight per output channel, as calibration would."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kiln.ir.graph import Node, Value
from kiln.ops.quantized import quantize

FP8, INT8 = "fp8e4m3", "int8"


def _qconv(ins: list, fmt: str, x_scale: float, epilogue, k: int, stride: int, extra: dict):
    attrs = {"x_scale": x_scale, "x_zero_point": 0, "x_dtype": fmt, "epilogue": list(epilogue),
             "pads": [k // 2] * 4, "strides": [stride, stride], "channels_last": 1, **extra}
    node = Node("QConv", ins, [Value("y")], attrs, name="qc", domain="kiln")
    return node, {v.id: v.const for v in ins if v is not None and v.const is not None}


def conv_node(c, o, k, stride, epilogue, bias=True, seed=0, fmt=FP8, **extra):
    """A layer of random codes (fp8: normal * 60 saturated; int8: uniform in [-127, 127]), weight scales of
    1e-3..3e-3, X scale 0.03; input 4 is the residual slot."""
    g = torch.Generator().manual_seed(seed)
    if fmt == FP8:
        wq = (torch.randn(o, c, k, k, generator=g) * 60).clamp(-448, 448).to(torch.float8_e4m3fn)
    else:
        wq = torch.randint(-127, 128, (o, c, k, k), generator=g, dtype=torch.int8)
    ws = torch.rand(o, generator=g) * 2e-3 + 1e-3
    ins = [Value("x"), Value("wq", const=wq), Value("ws", const=ws),
           Value("b", const=torch.randn(o, generator=g)) if bias else None, Value("r")]
    return _qconv(ins, fmt, 0.03, epilogue, k, stride, extra)


def cuda_layer(c, o, k, stride, epilogue, seed=0, fmt=FP8, **extra):
    """A layer on CUDA from a random float weight quantized per output channel (X scale: 4 over the format's
    largest code), float16 outputs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(o, c, k, k, generator=g) / (c * k * k) ** 0.5
    top = 448 if fmt == FP8 else 127
    sw = w.abs().amax((1, 2, 3)) / top
    wq = (w / sw.view(-1, 1, 1, 1)).to(torch.float8_e4m3fn) if fmt == FP8 else \
        torch.round(w / sw.view(-1, 1, 1, 1)).clamp(-127, 127).to(torch.int8)
    cuda = torch.device("cuda")
    ins = [Value("x"), Value("wq", const=wq.to(cuda)), Value("ws", const=sw.to(cuda)),
           Value("b", const=(torch.randn(o, generator=g) * 0.1).to(cuda)), Value("r")]
    return _qconv(ins, fmt, 4.0 / top, epilogue, k, stride, {"float_dtype": "float16", **extra})


def nhwc(t):
    return t.contiguous(memory_format=torch.channels_last)


def inputs_of(node, x, residual=None):
    return [x, *[v.const if v is not None else None for v in node.inputs[1:4]], residual]


def oracle(node, x, residual=None):
    """float64 from the same 8-bit X (integer and e4m3 sums are exact there): relu and residual-add steps."""
    a = node.attrs
    xq = x.double() if a.get("input_quantized") else quantize(x, a["x_scale"], 0, a["x_dtype"]).double()
    wq, ws = node.inputs[1].const.double(), node.inputs[2].const.double()
    y = F.conv2d(xq, wq, None, stride=a["strides"], padding=a["pads"][:2]) * (ws * a["x_scale"]).view(1, -1, 1, 1)
    if node.inputs[3] is not None:
        y = y + node.inputs[3].const.double().view(1, -1, 1, 1)
    for step in a["epilogue"]:
        y = F.relu(y) if step == "relu" else y + residual.double()
    return y


def rel(got, ref) -> float:
    return float((got.double() - ref).norm() / ref.norm())


def run_both(tactic: str, node, consts, x, r=None, config=None, gemm=False):
    """The layer through the CUDA tactic ``tactic`` (``config``: fp8_conv.CONFIGS[0] by default; ``gemm``: the
    1x1 GEMM form) and through its own kernel, synchronized; both channels-last, of one shape."""
    from kiln.backends.triton.fp8_conv import CONFIGS
    from kiln.ops import KernelContext
    from kiln.ops.quantized import qconv
    from kiln.tactics import space
    cuda = torch.device("cuda")
    ctx = KernelContext(opset=21, device=cuda)
    params = {"config": list(config or CONFIGS[0]), **({"gemm": 1} if gemm else {})}
    t = space.make(space.Choice(tactic, params), node, consts, cuda)
    ins = [x] + [consts[v.id] for v in node.inputs[1:4]] + [r]
    got = t.kernel(ctx, list(ins), node.attrs)
    own = qconv(ctx, list(ins), node.attrs)
    torch.cuda.synchronize()
    for g, o in zip(got, own) if isinstance(got, tuple) else [(got, own)]:
        assert g.shape == o.shape and g.is_contiguous(memory_format=torch.channels_last)
    return got, own
