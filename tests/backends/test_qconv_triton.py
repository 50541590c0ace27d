"""The Triton implicit-GEMM kiln::QConv (kiln/backends/triton/qconv.py) on the CPU through TRITON_INTERPRET=1,
tiny shapes. Oracles: F.conv2d in float64 on the integer (or fp8) values, the dequantized layer computed in
float64, and kiln::QConv's own kernel (what the tuner checks every tactic against). The sm_90 form of the
kernel (wgmma on int8 / fp8) is compiled on the host, without a GPU."""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

from kiln.backends.triton import aot  # noqa: E402
from kiln.backends.triton.qconv import CONFIGS, QConvLaunch, qconv_source  # noqa: E402
from kiln.errors import KernelError  # noqa: E402
from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.quantized import qconv as reference_qconv  # noqa: E402
from kiln.ops.quantized import quantize  # noqa: E402
from kiln.tactics.qconv import qconv_tactic  # noqa: E402
from kiln.tactics.space import NotApplicable  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on masked-off lanes
CPU = torch.device("cpu")
SMALL = (32, 16, 16, 4, 4, 1)  # BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages


def ctx():
    return KernelContext(opset=17, device=CPU, num_outputs=1)


def make_layer(c, o, k, stride=1, pad=0, fp8=False, bias=True, seed=0, extra_inputs=0, **attrs):
    """A kiln::QConv node, its constants and its weight (quantized) and scales."""
    gen = torch.Generator().manual_seed(seed)
    if fp8:
        wq = (torch.randn(o, c, k, k, generator=gen) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)
        sw = torch.tensor([0.01])
    else:
        wq = torch.randint(-127, 128, (o, c, k, k), generator=gen, dtype=torch.int8)
        sw = torch.rand(o, generator=gen) * 0.02 + 0.001
    b = torch.randn(o, generator=gen) if bias else None
    ins = [Value("x"), Value("w", const=wq), Value("sw", const=sw)]
    if bias or extra_inputs:
        ins.append(Value("b", const=b) if bias else None)
    ins += [Value(f"r{j}") for j in range(extra_inputs)]
    a = {"strides": [stride, stride], "pads": [pad] * 4, "x_scale": 0.05, "x_zero_point": 0,
         "x_dtype": "fp8e4m3" if fp8 else "int8", "w_absmax": 127, **attrs}
    node = Node("QConv", ins, [Value("y")], a, name="qc", domain="kiln")
    consts = {v.id: v.const for v in ins if v is not None and v.const is not None}
    return node, consts


def inputs_of(node, x, *extras):
    return [x] + [v.const for v in node.inputs[1:len(node.inputs) - len(extras)]] + list(extras)


def run_tactic(node, consts, inputs, config=SMALL, **params):
    t = qconv_tactic(node, {"config": list(config), **params}, consts, CPU, on_cpu=True)
    return t, t.kernel(ctx(), inputs, node.attrs)


# -- integer exactness --------------------------------------------------------------------------------------
@pytest.mark.parametrize("c,k,stride,pad,hw", [(16, 3, 1, 1, 6), (16, 3, 2, 1, 6), (16, 1, 1, 0, 6),
                                               (32, 3, 1, 1, 5), (3, 7, 2, 3, 9), (16, 1, 2, 0, 7)])
def test_int8_sums_are_exact(c, k, stride, pad, hw):
    """Scales 1, no bias, int8 input as is: the output is the integer convolution, to the last bit."""
    node, consts = make_layer(c, 16, k, stride, pad, bias=False, input_quantized=1, x_scale=1.0)
    consts[node.inputs[2].id] = torch.ones(16)
    node.inputs[2].const = torch.ones(16)
    x = torch.randint(-128, 128, (2, c, hw, hw), generator=torch.Generator().manual_seed(1), dtype=torch.int8)
    t, y = run_tactic(node, consts, inputs_of(node, x))
    ref = F.conv2d(x.double(), node.inputs[1].const.double(), stride=stride, padding=pad)
    assert ("flat" in t.name) == (c % SMALL[2] != 0)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert torch.equal(y.double(), ref)


# -- whole layers against float64 and the reference kernel ---------------------------------------------------
def dequantized_oracle(node, x, residual=None):
    """The layer in float64 on the dequantized values: conv(q(x)*sx, Wq*sw) + b, epilogue."""
    a = node.attrs
    sx, zp = a["x_scale"], a.get("x_zero_point", 0)
    xq = x if a.get("input_quantized") else quantize(x, sx, zp, a["x_dtype"])
    xd = (xq.double() - zp) * sx
    w, sw = node.inputs[1].const, node.inputs[2].const
    wd = w.double() * sw.double().reshape(-1, 1, 1, 1)
    b = node.inputs[3].const.double() if len(node.inputs) > 3 and node.inputs[3] is not None else None
    y = F.conv2d(xd, wd, b, stride=a["strides"], padding=a["pads"][:2])
    for step in a.get("epilogue", []):
        y = y + residual.double() if step.startswith("add:") else y.relu()
    return y


def rel(got, ref):
    return float((got.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


@pytest.mark.parametrize("quant_in", ["kernel", "torch"])
@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 1), (1, 1, 0)])
def test_int8_layer_float_input(quant_in, k, stride, pad):
    node, consts = make_layer(16, 16, k, stride, pad, epilogue=["relu"])
    x = torch.randn(1, 16, 6, 6, generator=torch.Generator().manual_seed(2))
    _, y = run_tactic(node, consts, inputs_of(node, x), quant_in=quant_in)
    ref = reference_qconv(ctx(), inputs_of(node, x), node.attrs)
    assert y.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    assert rel(y, dequantized_oracle(node, x)) < 1e-6


def test_channels_last_fp16_with_residual_add_relu():
    """ResNet's bottleneck end: conv + bias + residual (fp16, channels-last) + relu, fp16 out, channels-last."""
    node, consts = make_layer(16, 16, 1, extra_inputs=1, epilogue=["add:4", "relu"], channels_last=1)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 5, 5, generator=gen).half().contiguous(memory_format=torch.channels_last)
    r = torch.randn(2, 16, 5, 5, generator=gen).half().contiguous(memory_format=torch.channels_last)
    ins = inputs_of(node, x, r)
    _, y = run_tactic(node, consts, ins)
    ref = reference_qconv(ctx(), ins, node.attrs)
    assert y.dtype == torch.float16 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, rtol=1e-3, atol=1e-3)
    assert rel(y, dequantized_oracle(node, x, r)) < 2e-3


def test_requantized_int8_output():
    node, consts = make_layer(16, 16, 3, 1, 1, epilogue=["relu"], out_scale=0.07, out_zero_point=0,
                              out_dtype="int8")
    x = torch.randn(1, 16, 6, 6, generator=torch.Generator().manual_seed(4))
    _, y = run_tactic(node, consts, inputs_of(node, x))
    ref = reference_qconv(ctx(), inputs_of(node, x), node.attrs)
    assert y.dtype == torch.int8
    # the same float32 value rounds the same way; a tie moved by one float32 ulp may round one step apart
    diff = (y.int() - ref.int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01


def test_uint8_with_zero_point_pads_with_the_real_zero():
    """Asymmetric uint8 activations: padding reads the zero point, sums are corrected by zp * sum(w)."""
    node, consts = make_layer(16, 16, 3, 2, 1, x_dtype="uint8", x_zero_point=133)
    x = torch.rand(1, 16, 7, 7, generator=torch.Generator().manual_seed(5))
    _, y = run_tactic(node, consts, inputs_of(node, x))
    ref = reference_qconv(ctx(), inputs_of(node, x), node.attrs)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-5)
    assert rel(y, dequantized_oracle(node, x)) < 1e-6


@pytest.mark.parametrize("quant_in", ["kernel", "torch"])
@pytest.mark.parametrize("c,k,stride,pad", [(16, 3, 1, 1), (3, 7, 2, 3)])
def test_fp8_layer(quant_in, c, k, stride, pad):
    node, consts = make_layer(c, 16, k, stride, pad, fp8=True, epilogue=["relu"], x_scale=0.01)
    x = torch.randn(1, c, 8, 8, generator=torch.Generator().manual_seed(6))
    _, y = run_tactic(node, consts, inputs_of(node, x), quant_in=quant_in)
    ref = reference_qconv(ctx(), inputs_of(node, x), node.attrs)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)  # the same fp8 values, fp32 sums
    assert rel(y, dequantized_oracle(node, x)) < 1e-5


# -- what it does not take -----------------------------------------------------------------------------------
@pytest.mark.parametrize("attrs,why", [({"group": 2}, "group"), ({"dilations": [2, 2]}, "dilations"),
                                       ({"pads": [1, 1, 0, 0]}, "asymmetric"),
                                       ({"epilogue": ["scale:2.0"]}, "scale")])
def test_not_applicable(attrs, why):
    node, consts = make_layer(16, 16, 3, 1, 1, **attrs)
    with pytest.raises(NotApplicable, match=why):
        qconv_tactic(node, {"config": list(SMALL)}, consts, CPU, on_cpu=True)


def test_not_applicable_on_the_cpu_unless_asked():
    node, consts = make_layer(16, 16, 3, 1, 1)
    with pytest.raises(NotApplicable, match="triton_on_cpu"):
        qconv_tactic(node, {}, consts, CPU)


def test_a_call_it_cannot_take_is_an_error_not_a_fallback():
    node, consts = make_layer(16, 16, 3, 1, 1, input_quantized=1)
    t = qconv_tactic(node, {"config": list(SMALL)}, consts, CPU, on_cpu=True)
    with pytest.raises(KernelError, match="input_quantized"):
        t.kernel(ctx(), inputs_of(node, torch.randn(1, 16, 6, 6)), node.attrs)


# -- the GPU form ----------------------------------------------------------------------------------------------
def test_sm90_sources_compile_to_wgmma():
    """int8 and fp8, tap and flat, float / 8-bit input, requantized output: each compiles for sm_90 and its
    PTX multiplies on the tensor cores with 8-bit operands (wgmma ... s8 / e4m3)."""
    cases = [  # (layer kwargs, input dtype, residual, expected PTX fragments)
        (dict(c=64, o=64, k=3, pad=1, input_quantized=1, epilogue=["relu"], out_scale=0.1, out_dtype="int8"),
         torch.int8, False, ["wgmma", ".s8"]),
        (dict(c=64, o=256, k=1, extra_inputs=1, epilogue=["add:4", "relu"], channels_last=1),
         torch.float16, True, ["wgmma", ".s8"]),
        (dict(c=3, o=64, k=7, stride=2, pad=3, epilogue=["relu"]), torch.float16, False, ["wgmma", ".s8"]),
        (dict(c=64, o=64, k=3, pad=1, fp8=True, epilogue=["relu"]), torch.float16, False, ["wgmma", "e4m3"]),
    ]
    jobs = []
    for kw, xdt, res, expect in cases:
        kw = dict(kw)
        node, consts = make_layer(kw.pop("c"), kw.pop("o"), kw.pop("k"), kw.pop("stride", 1), kw.pop("pad", 0),
                                  **kw)
        launch = QConvLaunch(node, consts, CPU, CONFIGS[0])
        spec, sig, constexprs = launch.aot_job(xdt, [torch.float16] if res else [])
        jobs.append({"source": qconv_source(spec, False), "signature": sig, "constexprs": constexprs,
                     "num_warps": CONFIGS[0][4], "num_stages": CONFIGS[0][5], "expect": expect})
    assert aot.compile_in_subprocess(jobs) == [""] * len(jobs)


# -- the tactic table ----------------------------------------------------------------------------------------
def test_space_rows_and_factory():
    from kiln.tactics import space
    rows = [r.params for r in space.DEFAULT.rows("kiln", "QConv") if r.name == "triton_qconv"]
    assert {tuple(p["config"]) for p in rows} == set(CONFIGS)  # the rows list qconv.CONFIGS
    node, consts = make_layer(16, 16, 3, 1, 1, epilogue=["relu"])
    chosen = space.candidates(node, torch.device("cuda"), level=4)
    assert sum(c.name == "triton_qconv" for c in chosen) == len(rows)
    on_cpu = space.DEFAULT.with_triton_on_cpu()  # the interpreter runs it on the CPU
    t = on_cpu.make(space.Choice("triton_qconv", {"config": list(SMALL)}), node, consts, CPU)
    assert t.name.startswith("triton_qconv[int8,tap,bias+relu]/config=")
    x = torch.randn(1, 16, 6, 6, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(t.kernel(ctx(), inputs_of(node, x), node.attrs),
                               reference_qconv(ctx(), inputs_of(node, x), node.attrs), rtol=1e-6, atol=1e-6)
