"""The quantize / dequantize-epilogue Triton kernels and the QLinear/QConv tactics built on them, on the CPU
through TRITON_INTERPRET=1 (small shapes), against float64 oracles and the ops' own kernels.

GPU-only (not run here): torch._scaled_mm's float16 output with its bias, the hardware fp32 -> e4m3 cast
(the interpreter path rounds onto the e4m3 grid first), libdevice.div_rn/rint, cuDNN's float16 convolution,
CUDA-graph capture. benchmarks/bench_qgemm.py checks those on the GPU.
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

from kiln.backends.triton.quant import DequantEpilogue, Quantize, dequant_program, quantize_source  # noqa: E402
from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.quantized import qconv, qlinear, quantize  # noqa: E402
from kiln.tactics import space  # noqa: E402
from kiln.tactics.quantized import QConvHalf, QGemm  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
CPU = torch.device("cpu")
CTX = KernelContext(opset=21, device=CPU)


def rel(got, ref) -> float:
    g, r = got.double(), ref.double()
    return float((g - r).norm() / r.norm())


# -- quantize ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("xdt", [torch.float16, torch.float32])
@pytest.mark.parametrize("dtype,zp", [("int8", 0), ("int8", 3), ("uint8", 128), ("uint8", 7)])
def test_quantize_int_matches_quantizelinear(xdt, dtype, zp):
    scale = 0.05
    x = torch.randn(7, 33) * 4
    x[0, :8] = (torch.arange(8) - 4 + 0.5) * scale  # exact ties: round half to even
    x[1, :2] = torch.tensor([1e4, -1e4])  # saturation
    x = x.to(xdt)
    ref = quantize(x, scale, zp, dtype)
    got = Quantize(scale, dtype, zp, "q")(x, torch.empty(x.numel(), dtype=torch.int8)).view(x.shape)
    expect = (ref.to(torch.int16) - 128).to(torch.int8) if dtype == "uint8" else ref  # uint8 stored centred
    assert torch.equal(got, expect)
    half = Quantize(scale, dtype, zp, "float16")(x, torch.empty(x.numel(), dtype=torch.float16)).view(x.shape)
    assert torch.equal(half, (ref.to(torch.float32) - zp).half())


@pytest.mark.parametrize("xdt", [torch.float16, torch.bfloat16, torch.float32])
def test_quantize_fp8_matches_torch_cast(xdt):
    scale = 0.01
    x = torch.cat([torch.randn(300) * 2, torch.tensor([1.2695, -1.26951, 5.0, -9.0, 1e-6, 0.0, 0.0271])]).to(xdt)
    ref = quantize(x, scale, 0, "fp8e4m3")
    got = Quantize(scale, "fp8e4m3", 0, "q")(x, torch.empty(x.numel(), dtype=torch.float8_e4m3fn))
    assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))
    half = Quantize(scale, "fp8e4m3", 0, "float16")(x, torch.empty(x.numel(), dtype=torch.float16))
    assert torch.equal(half, ref.to(torch.float16))


def test_quantize_keeps_channels_last_memory_order():
    x = torch.randn(2, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    out = torch.empty_like(x, dtype=torch.float16)
    Quantize(0.02, "int8", 0, "float16")(x, out)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, quantize(x, 0.02).to(torch.float16))


def test_gpu_source_uses_correctly_rounded_division():
    src = quantize_source("int8", 0, "q", interpret=False)
    assert "libdevice.div_rn" in src and "libdevice.rint" in src
    assert "tl.float8e4nv" in quantize_source("fp8e4m3", 0, "q", interpret=False)


# -- dequantize epilogue ---------------------------------------------------------------------------------------------
def test_dequant_program_shape():
    prog, _, ops = dequant_program(["gelu", "add:4"], True, True, None)
    assert [line.to_json() for line in prog] == ["Cast(i0)", "Mul(t0,i3)", "Add(t1,i1)", "Gelu(t2)", "Add(t3,i2)"]
    assert ops == ["y", "bias", 4, "scale"]
    prog, _, _ = dequant_program([], False, False, (0.1, 0, "int8"))
    assert [line.to_json() for line in prog] == ["Div(i0,i1)", "Round(t0)", "Clip(t1)", "Cast(t2)"]


@pytest.mark.parametrize("steps", [["relu"], ["gelu"], ["gelu_tanh"], ["add:4"], ["gelu", "add:4"], []])
def test_dequant_epilogue_against_float64(steps):
    m, n = 6, 16
    acc = torch.randint(-40000, 40000, (m, n), dtype=torch.int32)
    s = torch.rand(n) * 1e-4
    b = torch.randn(n)
    r = torch.randn(m, n).half()
    inputs = [None, None, None, None, r]
    y = DequantEpilogue(steps, s, b, None)(acc, inputs, torch.float16)
    ref = acc.double() * s.double() + b.double()
    for step in steps:
        ref = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
               "add:4": lambda t: t + r.double()}[step](ref)
    assert y.dtype == torch.float16 and rel(y, ref) < 2e-3


def test_dequant_epilogue_requantizes():
    acc = torch.randint(-3000, 3000, (5, 8), dtype=torch.int32)
    s, b = torch.full((8,), 1e-3), torch.randn(8)
    y = DequantEpilogue(["relu"], s, b, (0.01, 3, "uint8"))(acc, [], torch.uint8)
    ref = quantize(F.relu(acc.double() * 1e-3 + b.double()), 0.01, 3, "uint8")
    assert y.dtype == torch.uint8 and int((y.int() - ref.int()).abs().max()) <= 1


def test_unknown_step_is_not_applicable():
    node, consts = _qlinear_node(16, 16, ["mystery"], fmt="int8")
    with pytest.raises(space.NotApplicable):
        QGemm(node, consts, CPU, fp8=False)


# -- tactics ---------------------------------------------------------------------------------------------------------
def _qlinear_node(k, n, epilogue, fmt="int8", zp=0, bias=True, **extra):
    torch.manual_seed(0)
    if fmt == "fp8e4m3":
        wq = (torch.randn(n, k) * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
        ws = torch.tensor([0.002])
    else:
        wq = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        ws = torch.rand(n) * 1e-2 + 1e-3
    ins = [Value("x"), Value("wq", const=wq), Value("ws", const=ws), Value("b", const=torch.randn(n)) if bias else None,
           Value("r")]
    attrs = {"x_scale": 0.03, "x_zero_point": zp, "x_dtype": fmt, "epilogue": epilogue, **extra}
    node = Node("QLinear", ins, [Value("y")], attrs, name="ql", domain="kiln")
    consts = {v.id: v.const for v in ins if v is not None and v.const is not None}
    return node, consts


def _reference(node, inputs):
    """The layer's arithmetic in float64 from the same quantized X (the oracle)."""
    a = node.attrs
    x = inputs[0]
    xq = quantize(x, a["x_scale"], a.get("x_zero_point", 0), a["x_dtype"]).double() - a.get("x_zero_point", 0)
    wq, ws = node.inputs[1].const.double(), node.inputs[2].const.double()
    y = (xq @ wq.t()) * (ws * a["x_scale"])
    if node.inputs[3] is not None:
        y = y + node.inputs[3].const.double()
    for step in a["epilogue"]:
        y = F.gelu(y) if step == "gelu" else F.relu(y) if step == "relu" else y + inputs[4].double()
    return y


@pytest.mark.parametrize("epilogue", [["gelu"], ["add:4"], []])
@pytest.mark.parametrize("fmt,zp", [("int8", 0), ("uint8", 128), ("uint8", 100)])
def test_int8_gemm_tactic_matches_own_kernel(epilogue, fmt, zp):
    node, consts = _qlinear_node(32, 24, epilogue, fmt=fmt, zp=zp)
    x = torch.randn(2, 5, 32).half()
    inputs = [x, consts[node.inputs[1].id], consts[node.inputs[2].id], consts[node.inputs[3].id],
              torch.randn(2, 5, 24).half()]
    layer = QGemm(node, consts, CPU, fp8=False)
    got = layer(CTX, list(inputs), node.attrs)
    own = qlinear(CTX, list(inputs), node.attrs)
    assert not layer.fallbacks and got.dtype == own.dtype == torch.float16 and got.shape == own.shape
    ref = _reference(node, inputs)
    assert rel(got, ref) < 2e-3 and rel(own, ref) < 2e-3


def test_int8_gemm_tactic_requantizes():
    node, consts = _qlinear_node(16, 16, ["relu"], out_scale=0.05, out_zero_point=0, out_dtype="int8")
    x = torch.randn(40, 16)
    inputs = [x, consts[node.inputs[1].id], consts[node.inputs[2].id], consts[node.inputs[3].id], None]
    got = QGemm(node, consts, CPU, fp8=False)(CTX, list(inputs), node.attrs)
    own = qlinear(CTX, list(inputs), node.attrs)
    assert got.dtype == torch.int8 and int((got.int() - own.int()).abs().max()) <= 1


def test_fp8_gemm_tactic_wiring_with_cpu_scaled_mm():
    node, consts = _qlinear_node(32, 16, ["gelu", "add:4"], fmt="fp8e4m3")
    x = torch.randn(3, 32).half()
    inputs = [x, consts[node.inputs[1].id], consts[node.inputs[2].id], consts[node.inputs[3].id],
              torch.randn(3, 16).half()]
    layer = QGemm(node, consts, CPU, fp8=True)
    try:
        got = layer(CTX, list(inputs), node.attrs)
    except RuntimeError as e:  # this torch's CPU _scaled_mm may not take a float16 bias
        pytest.skip(f"CPU torch._scaled_mm: {e}")
    own = qlinear(CTX, list(inputs), node.attrs)
    assert not layer.fallbacks and got.dtype == torch.float16
    assert rel(got, _reference(node, inputs)) < 1e-2 and rel(got, own) < 1e-2


def _qconv_node(c, o, ksize, fmt="int8", epilogue=(), pads=None, channels_last=1):
    torch.manual_seed(1)
    if fmt == "fp8e4m3":
        wq = (torch.randn(o, c, ksize, ksize) * 60).clamp(-448, 448).to(torch.float8_e4m3fn)
        ws = torch.tensor([0.001])
    else:
        wq = torch.randint(-127, 128, (o, c, ksize, ksize), dtype=torch.int8)
        ws = torch.rand(o) * 1e-2 + 1e-3
    ins = [Value("x"), Value("wq", const=wq), Value("ws", const=ws), Value("b", const=torch.randn(o)), Value("r")]
    attrs = {"x_scale": 0.02, "x_zero_point": 0, "x_dtype": fmt, "epilogue": list(epilogue),
             "channels_last": channels_last, "pads": pads or [0] * 4}
    node = Node("QConv", ins, [Value("y")], attrs, name="qc", domain="kiln")
    return node, {v.id: v.const for v in ins if v.const is not None}


@pytest.mark.parametrize("fmt", ["int8", "fp8e4m3"])
def test_1x1_qconv_as_gemm(fmt):
    node, consts = _qconv_node(16, 32, 1, fmt=fmt, epilogue=["add:4", "relu"])
    x = torch.randn(2, 16, 3, 5).contiguous(memory_format=torch.channels_last)
    r = torch.randn(2, 32, 3, 5).contiguous(memory_format=torch.channels_last)
    inputs = [x, consts[node.inputs[1].id], consts[node.inputs[2].id], consts[node.inputs[3].id], r]
    layer = QGemm(node, consts, CPU, fp8=fmt == "fp8e4m3")
    got = layer(CTX, list(inputs), node.attrs)
    own = qconv(CTX, list(inputs), node.attrs)
    assert not layer.fallbacks and not layer.conversions
    assert got.shape == own.shape and got.dtype == own.dtype
    assert rel(got, own) < (1e-5 if fmt == "int8" else 1e-2)


def test_3x3_qconv_not_a_gemm():
    node, consts = _qconv_node(8, 16, 3, pads=[1, 1, 1, 1])
    with pytest.raises(space.NotApplicable):
        QGemm(node, consts, CPU, fp8=False)


@pytest.mark.parametrize("fmt", ["int8", "fp8e4m3"])
@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 1, 1, 0]])
def test_qconv_fp16_against_float64(fmt, pads):
    node, consts = _qconv_node(16, 8, 3, fmt=fmt, epilogue=["relu"], pads=pads)
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    inputs = [x, consts[node.inputs[1].id], consts[node.inputs[2].id], consts[node.inputs[3].id], None]
    try:
        layer = QConvHalf(node, consts, CPU)
        got = layer(CTX, list(inputs), node.attrs)
    except RuntimeError as e:
        pytest.skip(f"no float16 convolution on this CPU torch: {e}")
    own = qconv(CTX, list(inputs), node.attrs)
    assert not layer.fallbacks and got.dtype == own.dtype
    assert rel(got, own) < 2e-3  # float16 conv output: ~2**-11 relative per element


def test_qconv_fp16_weight_scaling_avoids_overflow():
    node, consts = _qconv_node(512, 4, 3)  # max sum 128 * 4608 * 127 >> 65504
    layer = QConvHalf(node, consts, CPU)
    assert float(layer.w16.abs().max()) < 1.0 and torch.isfinite(layer.w16).all()


@pytest.mark.parametrize("name", ["int8_fast", "fp8_fast", "qconv_fp16"])
def test_factories_are_not_applicable_off_cuda(name):
    node, consts = _qlinear_node(16, 16, ["relu"])
    with pytest.raises(space.NotApplicable, match="CUDA"):
        space.make(space.Choice(name), node, consts, CPU)
    assert space.Choice(name) not in space.candidates(node, CPU, level=5)
    assert space.Choice(name) in space.candidates(
        node if name != "qconv_fp16" else _qconv_node(8, 8, 3)[0], torch.device("cuda"), level=3)


def test_not_applicable_layers():
    node, consts = _qlinear_node(16, 16, [], x_dynamic=1)
    with pytest.raises(space.NotApplicable, match="dynamic"):
        QGemm(node, consts, CPU, fp8=False)
    node, consts = _qlinear_node(20, 16, [])
    with pytest.raises(space.NotApplicable, match="multiples"):
        QGemm(node, consts, CPU, fp8=False)
    node, consts = _qlinear_node(16, 16, [])
    with pytest.raises(space.NotApplicable, match="int8"):
        QGemm(node, consts, CPU, fp8=True)
