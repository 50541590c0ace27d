"""Every quantized kernel against a float reference: the same quantized values, dequantized and run
through float32/64 torch ops (what a Q/DQ model means)."""
import pytest
import torch
import torch.nn.functional as F

from kiln.ops import KernelContext
from kiln.ops.quantized import int8_mm, qconv, qlinear, quantize
from kiln.quant.rewrite import weight_q

CTX = KernelContext(opset=17, device=torch.device("cpu"))
g = torch.Generator().manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, generator=g)


def fake_quant(x, scale, zp=0, dtype="int8"):
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    return (torch.clamp(torch.round(x.double() / scale) + zp, lo, hi) - zp) * scale


@pytest.mark.parametrize("m,k,n", [(1, 8, 4), (5, 33, 7), (64, 256, 96)])
def test_int8_mm_is_exact(m, k, n):
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    assert torch.equal(int8_mm(a, b).long(), a.long() @ b.long())


def test_quantize_rounds_half_to_even_and_saturates():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 1000.0, -1000.0])
    assert quantize(x, 1.0).tolist() == [0, 2, 2, 0, 127, -128]
    assert quantize(x, 1.0, 128, "uint8").tolist() == [128, 130, 130, 128, 255, 0]


@pytest.mark.parametrize("zp,dtype", [(0, "int8"), (3, "int8"), (100, "uint8")])
@pytest.mark.parametrize("bias", [False, True])
def test_qlinear_matches_fake_quant_reference(zp, dtype, bias):
    x, w, b = rand(2, 5, 48), rand(24, 48), rand(24)
    sx = float(x.abs().max()) / 100
    wq, sw = weight_q(w, "int8")
    attrs = {"x_scale": sx, "x_zero_point": zp, "x_dtype": dtype, "epilogue": ["relu"]}
    ins = [x, wq, sw] + ([b] if bias else [])
    got = qlinear(CTX, ins, attrs)
    ref = F.linear(fake_quant(x, sx, zp, dtype), wq.double() * sw.double()[:, None], b.double() if bias else None)
    torch.testing.assert_close(got.double(), ref.relu(), rtol=1e-5, atol=1e-5)


def test_qlinear_residual_epilogue_and_requantized_output():
    x, w, b, r = rand(3, 16), rand(8, 16), rand(8), rand(3, 8)
    wq, sw = weight_q(w, "int8")
    # Residual at slot 4 (inputs: x, wq, sw, b, r), then requantize with scale 0.05.
    attrs = {"x_scale": 0.02, "epilogue": ["add:4", "relu"], "out_scale": 0.05, "out_zero_point": 0,
             "out_dtype": "int8"}
    got = qlinear(CTX, [x, wq, sw, b, r], attrs)
    assert got.dtype == torch.int8
    ref = (F.linear(fake_quant(x, 0.02), wq.double() * sw.double()[:, None], b.double()) + r.double()).relu()
    want = torch.clamp(torch.round(ref / 0.05), -128, 127)
    assert (got.double() - want).abs().max() <= 1  # at most one step where float rounding differs


def test_qlinear_reads_already_quantized_input():
    x, w = rand(4, 16), rand(8, 16)
    wq, sw = weight_q(w, "int8")
    xq = quantize(x, 0.03)
    a = qlinear(CTX, [xq, wq, sw], {"x_scale": 0.03, "input_quantized": 1})
    b = qlinear(CTX, [x, wq, sw], {"x_scale": 0.03})
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kw", [dict(), dict(strides=[2, 2]), dict(pads=[1, 1, 1, 1]), dict(pads=[0, 1, 2, 1]),
                                dict(dilations=[2, 2], pads=[2, 2, 2, 2]), dict(group=2)])
@pytest.mark.parametrize("zp,dtype", [(0, "int8"), (128, "uint8")])
def test_qconv_matches_fake_quant_reference(kw, zp, dtype):
    groups = kw.get("group", 1)
    x, w, b = rand(2, 4, 9, 9), rand(6, 4 // groups, 3, 3), rand(6)
    sx = float(x.abs().max()) / 120
    wq, sw = weight_q(w, "int8")
    attrs = {"x_scale": sx, "x_zero_point": zp, "x_dtype": dtype, "epilogue": [], **kw}
    got = qconv(CTX, [x, wq, sw, b], attrs)
    pads = kw.get("pads", [0, 0, 0, 0])
    xr = F.pad(fake_quant(x, sx, zp, dtype), (pads[1], pads[3], pads[0], pads[2]))
    ref = F.conv2d(xr, wq.double() * sw.double()[:, None, None, None], b.double(), stride=kw.get("strides", 1),
                   dilation=kw.get("dilations", 1), groups=groups)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_qconv_large_reduction_uses_exact_float64():
    # K = 256 * 9 * 128 * 127 > 2**24: the float32 route could round; float64 is exact.
    x, w = rand(1, 256, 5, 5) * 10, rand(4, 256, 3, 3)
    wq, sw = weight_q(w, "int8")
    got = qconv(CTX, [x, wq, sw], {"x_scale": 0.01, "epilogue": []})
    xq = quantize(x, 0.01)
    exact = F.conv2d(xq.double(), wq.double())  # integer sums, exact in float64
    torch.testing.assert_close(got.double(), exact * 0.01 * sw.double()[None, :, None, None], rtol=1e-6, atol=1e-6)


def test_fp8_linear_against_emulation():
    x, w = rand(8, 32), rand(16, 32)
    wq, sw = weight_q(w, "fp8e4m3")
    assert wq.dtype == torch.float8_e4m3fn and sw.numel() == 1
    sx = float(x.abs().max()) / 448
    got = qlinear(CTX, [x, wq, sw], {"x_scale": sx, "x_dtype": "fp8e4m3"})
    xq = (x / sx).clamp(-448, 448).to(torch.float8_e4m3fn).double() * sx
    ref = xq @ (wq.double() * sw.double()).t()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    assert float(torch.nn.functional.cosine_similarity(got.flatten(), (x @ w.t()).flatten(), dim=0)) > 0.99


def test_meta_shapes():
    x = torch.empty(2, 7, 16, device="meta")
    wq, sw = weight_q(rand(8, 16), "int8")
    assert qlinear(CTX, [x, wq, sw], {"x_scale": 0.1}).shape == (2, 7, 8)
    out = qlinear(CTX, [x, wq, sw], {"x_scale": 0.1, "out_scale": 0.1, "out_dtype": "int8"})
    assert out.dtype == torch.int8
    xc = torch.empty(1, 4, 9, 9, device="meta")
    wq, sw = weight_q(rand(6, 4, 3, 3), "int8")
    assert qconv(CTX, [xc, wq, sw], {"x_scale": 0.1, "strides": [2, 2], "pads": [1, 1, 1, 1]}).shape == (1, 6, 5, 5)


def test_weight_quantization_per_channel():
    w = rand(4, 10)
    w[2] *= 100
    wq, sw = weight_q(w, "int8")
    assert wq.abs().amax(1).tolist() == [127] * 4
    torch.testing.assert_close(wq.double() * sw.double()[:, None], w.double(), atol=float(sw.max()) / 2, rtol=0)


def test_qlinear_smoothing_and_dynamic_rows():
    x, w = rand(6, 16), rand(8, 16)
    x[:, 3] *= 50  # an outlier channel
    s = (x.abs().amax(0).clamp(min=1e-5) ** 0.5) / (w.abs().amax(0).clamp(min=1e-5) ** 0.5)
    wq, sw = weight_q(w * s, "int8")
    xs = x / s
    sx = float(xs.abs().max()) / 127
    got = qlinear(CTX, [x, wq, sw, None, (1 / s)], {"x_scale": sx, "smooth_input": 4})
    ref = fake_quant(x * (1 / s), sx) @ (wq.double() * sw.double()[:, None]).t()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    got = qlinear(CTX, [x, wq, sw, None, (1 / s)], {"x_scale": 0.0, "x_dynamic": 1, "smooth_input": 4})
    rows = (x * (1 / s)).double()
    r = rows.abs().amax(1, keepdim=True) / 127
    ref = (torch.round(rows / r).clamp(-127, 127) * r) @ (wq.double() * sw.double()[:, None]).t()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
