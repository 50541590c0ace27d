"""The TMA kernels with int8 operands (tactics ``int8_conv`` and ``int8_triton``: kiln/backends/triton/fp8_conv.py
and fp8_gemm.py with wgmma s8 and an int32 accumulator) on the CPU through TRITON_INTERPRET=1: symmetric int8
convolutions and GEMMs against the layer's own kernel (exact integer sums) and a float64 oracle, requantized int8
chains, the second int8 copy of a float output, an int8 shortcut (``addq``), what the tactics refuse, and the GPU
forms compiled for sm_90. Timing is benchmarks/bench_int8.py's job (INT8 ResNet-50 on the GPU)."""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

from kiln.backends.triton import aot  # noqa: E402
from kiln.backends.triton.fp8_conv import CONFIGS, Fp8ConvSpec, fp8_conv_source  # noqa: E402
from kiln.backends.triton.fp8_gemm import Fp8GemmSpec, fp8_gemm_source  # noqa: E402
from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.fused_steps import Instr  # noqa: E402
from kiln.ops.quantized import qconv, qlinear, quantize  # noqa: E402
from kiln.tactics import space  # noqa: E402
from kiln.tactics.quantized import Fp8ConvTriton, Fp8GemmTriton  # noqa: E402
from kiln.tune.tuner import _quantized_mismatch  # noqa: E402
import qconv_layers  # noqa: E402
from qconv_layers import inputs_of, nhwc, oracle, rel  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
CPU = torch.device("cpu")
CTX = KernelContext(opset=21, device=CPU)
CONV_CFG = CONFIGS[0]
GEMM_CFG = (128, 128, 128, 8, 8, 3)


def conv_node(*args, **kw):
    return qconv_layers.conv_node(*args, fmt=qconv_layers.INT8, **kw)


@pytest.mark.parametrize("k,stride,h", [(3, 1, 6), (3, 2, 8), (1, 2, 6), (5, 1, 5), (3, 1, 9)])
@pytest.mark.parametrize("epilogue", [["relu"], ["add:4", "relu"]])
def test_int8_conv_float_output_matches_own_kernel_and_oracle(k, stride, h, epilogue):
    """Padding is TMA's zero fill, which is the real zero for symmetric int8; edge tiles at odd sizes."""
    node, consts = conv_node(32, 48, k, stride, epilogue)
    x = nhwc(torch.randn(3, 32, h, h).half())
    oh = (h + 2 * (k // 2) - k) // stride + 1
    r = nhwc(torch.randn(3, 48, oh, oh).half()) if "add:4" in epilogue else None
    layer = Fp8ConvTriton(node, consts, CPU, CONV_CFG, gemm=False, fmt="int8")
    got = layer(CTX, inputs_of(node, x, r), node.attrs)
    own = qconv(CTX, inputs_of(node, x, r), node.attrs)
    assert not layer.fallbacks and got.dtype == own.dtype == torch.float16 and got.shape == own.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    ref = oracle(node, x, r)
    assert rel(got, ref) < 1e-3 and rel(own, ref) < 1e-3
    assert layer.name.startswith(f"triton_quant+triton_s8_conv[{k}x{k}s{stride},bias+")


def test_int8_requantized_chain_conv_to_conv_and_gemm():
    """int8 activations from conv to conv: a 3x3 layer writes int8 codes (saturated, half to even, as the own
    kernel within the tuner's one-step check), a 1x1 layer reads them as is through the int8 GEMM."""
    node, consts = conv_node(16, 32, 3, 1, ["relu"], out_scale=0.05, out_zero_point=0, out_dtype="int8")
    x = nhwc(torch.randn(2, 16, 7, 7).half() * 3)
    first = Fp8ConvTriton(node, consts, CPU, CONV_CFG, gemm=False, fmt="int8")
    y8 = first(CTX, inputs_of(node, x), node.attrs)
    own = qconv(CTX, inputs_of(node, x), node.attrs)
    assert y8.dtype == own.dtype == torch.int8 and first.name.endswith(",requant]")
    assert _quantized_mismatch(y8, own) is None and int(y8.max()) == 127  # some codes saturate

    nxt, c2 = conv_node(32, 16, 1, 1, ["add:4"], seed=1, input_quantized=1, x_scale=0.05, float_dtype="float16")
    r = nhwc(torch.randn(2, 16, 7, 7).half())
    second = Fp8ConvTriton(nxt, c2, CPU, GEMM_CFG, gemm=True, fmt="int8")
    assert second.name == "triton_s8_gemm[bias+add:4]"
    z = second(CTX, inputs_of(nxt, y8, r), nxt.attrs)
    ref = qconv(CTX, inputs_of(nxt, y8, r), nxt.attrs)
    assert z.dtype == torch.float16 and z.is_contiguous(memory_format=torch.channels_last)
    assert rel(z, ref.double()) < 1e-3


@pytest.mark.parametrize("gemm", [False, True])
def test_second_int8_copy_of_a_float_output(gemm):
    """A block's output: float (for the residual add) and its int8 copy (for the next block's convolutions)."""
    k = 1 if gemm else 3
    node, consts = conv_node(16, 32, k, 1, ["add:4", "relu"], q_scale=0.05, q_zero_point=0, q_dtype="int8")
    x, r = nhwc(torch.randn(2, 16, 6, 6).half()), nhwc(torch.randn(2, 32, 6, 6).half())
    layer = Fp8ConvTriton(node, consts, CPU, GEMM_CFG if gemm else CONV_CFG, gemm=gemm, fmt="int8")
    y, yq = layer(CTX, inputs_of(node, x, r), node.attrs)
    own_y, own_q = qconv(CTX, inputs_of(node, x, r), node.attrs)
    assert y.dtype == own_y.dtype == torch.float16 and yq.dtype == own_q.dtype == torch.int8
    assert yq.is_contiguous(memory_format=torch.channels_last) and layer.name.endswith(",+s8 copy]")
    assert rel(y, own_y.double()) < 1e-3 and _quantized_mismatch(yq, own_q) is None
    assert _quantized_mismatch(yq, quantize(y, 0.05, 0, "int8")) is None  # the copy of what was stored


@pytest.mark.parametrize("gemm", [False, True])
def test_int8_shortcut_addq(gemm):
    """An int8 shortcut: ``addq:4:S`` adds codes * S in the tile; the block output is requantized to int8."""
    k = 1 if gemm else 3
    node, consts = conv_node(16, 32, k, 1, ["addq:4:0.0625", "relu"], input_quantized=1, x_scale=0.05,
                             out_scale=0.05, out_zero_point=0, out_dtype="int8")
    x = nhwc(torch.randint(-128, 128, (2, 16, 6, 6), dtype=torch.int8))
    r = nhwc(torch.randint(-128, 128, (2, 32, 6, 6), dtype=torch.int8))
    layer = Fp8ConvTriton(node, consts, CPU, GEMM_CFG if gemm else CONV_CFG, gemm=gemm, fmt="int8")
    got = layer(CTX, inputs_of(node, x, r), node.attrs)
    own = qconv(CTX, inputs_of(node, x, r), node.attrs)
    assert got.dtype == own.dtype == torch.int8 and _quantized_mismatch(got, own) is None
    a = node.attrs
    y = F.conv2d(x.double(), node.inputs[1].const.double(), padding=k // 2) * \
        (node.inputs[2].const.double() * a["x_scale"]).view(1, -1, 1, 1) + node.inputs[3].const.double().view(1, -1, 1, 1)
    ref = quantize(F.relu(y + r.double() * 0.0625).float(), 0.05, 0, "int8")
    assert _quantized_mismatch(got, ref) is None


def test_int8_qlinear_through_the_tma_gemm():
    g = torch.Generator().manual_seed(3)
    wq = torch.randint(-127, 128, (48, 64), generator=g, dtype=torch.int8)
    ws, b = torch.rand(48, generator=g) * 1e-2, torch.randn(48, generator=g)
    ins = [Value("x"), Value("wq", const=wq), Value("ws", const=ws), Value("b", const=b)]
    attrs = {"x_scale": 0.02, "x_zero_point": 0, "x_dtype": "int8", "epilogue": ["gelu"]}
    node = Node("QLinear", ins, [Value("y")], attrs, name="ql", domain="kiln")
    consts = {v.id: v.const for v in ins[1:]}
    layer = Fp8GemmTriton(node, consts, CPU, GEMM_CFG, fmt="int8")
    x = torch.randn(5, 7, 64).half()
    got = layer(CTX, [x, wq, ws, b], attrs)
    own = qlinear(CTX, [x, wq, ws, b], attrs)
    assert got.shape == own.shape == (5, 7, 48) and got.dtype == own.dtype == torch.float16
    assert rel(got, own.double()) < 2e-3 and layer.name == "triton_quant+triton_s8_gemm[bias+gelu]"


@pytest.mark.parametrize("extra,fmt,why", [
    ({"x_zero_point": 3}, "int8", "zero point 3"),
    ({"x_dtype": "uint8"}, "int8", "X is uint8"),
    ({"out_scale": 0.1, "out_zero_point": 0, "out_dtype": "fp8e4m3"}, "int8", "requantization to fp8e4m3"),
    ({"q_scale": 0.1, "q_zero_point": 0, "q_dtype": "fp8e4m3"}, "int8", "a second, fp8e4m3 output"),
    ({}, "fp8e4m3", "X is int8"),  # the fp8 tactic leaves int8 layers to the int8 one
])
def test_not_applicable(extra, fmt, why):
    node, consts = conv_node(16, 16, 3, 1, [], **extra)
    with pytest.raises(space.NotApplicable, match=why):
        Fp8ConvTriton(node, consts, CPU, CONV_CFG, gemm=False, fmt=fmt)


def test_space_rows_mirror_the_fp8_ones_and_the_factory_needs_cuda():
    node, consts = conv_node(16, 16, 3, 1, [])
    with pytest.raises(space.NotApplicable, match="CUDA"):
        space.make(space.Choice("int8_conv", {"config": list(CONFIGS[0])}), node, consts, CPU)
    rows = space.DEFAULT.rows("kiln", "QConv")
    fp8 = [(r.params, r.min_level) for r in rows if r.name == "fp8_conv"]
    assert fp8 and fp8 == [(r.params, r.min_level) for r in rows if r.name == "int8_conv"]
    lin = space.DEFAULT.rows("kiln", "QLinear")
    assert [r.params for r in lin if r.name == "fp8_triton"] == [r.params for r in lin if r.name == "int8_triton"]


def test_sm90_sources_compile_to_tma_and_s8_wgmma():
    jobs = []
    bb, bh, bw = 2, 8, 8
    bn, bk, gm, warps, stages = CONFIGS[0]
    for out, res, q_out in [(torch.int8, (), False), (torch.float16, (torch.float16,), True),
                            (torch.int8, (torch.int8,), False)]:
        if res and res[0] == torch.int8:  # addq: the int8 shortcut times its scale
            program, extras = ("Add(i0,i1)", "Mul(i2,i3)", "Add(t0,t1)", "Relu(t2)"), (0, 0.0625)
        else:
            program, extras = ("Add(i0,i1)", "Relu(t0)") + (("Add(t1,i2)",) if res else ()), (0,) if res else ()
        lines = tuple(map(Instr.from_json, program))
        spec = Fp8ConvSpec(False, torch.float32, lines, ((),) * len(program), res, out, True, q_out, extras,
                           torch.int8)
        ty = {torch.float16: "fp16", torch.int8: "i8"}
        sig = {"x_desc": f"tensordesc<i8[{bb}, {bh}, {bw}, {bk}]>", "w_desc": f"tensordesc<i8[{bn}, {bk}]>",
               "out_desc": f"tensordesc<{ty[out]}[{bb}, {bh}, {bw}, {bn}]>", "scale_ptr": "*fp32", "b_ptr": "*fp32"}
        sig.update({f"r{j}_desc": f"tensordesc<{ty[dt]}[{bb}, {bh}, {bw}, {bn}]>" for j, dt in enumerate(res)})
        if q_out:
            sig["q_desc"] = f"tensordesc<i8[{bb}, {bh}, {bw}, {bn}]>"
        sig.update(NB="i32", OH="i32", OW="i32", O="i32", inv_out_scale="fp32", inv_q_scale="fp32")
        jobs.append({"source": fp8_conv_source(spec), "signature": sig, "num_warps": warps, "num_stages": stages,
                     "constexprs": dict(C=128, KH=3, KW=3, PH=1, PW=1, BB=bb, BH=bh, BW=bw, BLOCK_N=bn, BLOCK_K=bk,
                                        GROUP_M=gm, NUM_SMS=132),
                     "expect": ["wgmma", ".s8", "cp.async.bulk.tensor"]})
    bm, bn, bk, gm, warps, stages = GEMM_CFG
    spec = Fp8GemmSpec(True, torch.float32, (Instr.from_json("Add(i0,i1)"),), ((),), (), torch.int8, True, None,
                       code=torch.int8)
    sig = {"a_desc": f"tensordesc<i8[{bm}, {bk}]>", "w_desc": f"tensordesc<i8[{bn}, {bk}]>",
           "out_desc": f"tensordesc<i8[{bm}, {bn}]>", "scale_ptr": "*fp32", "b_ptr": "*fp32",
           "M": "i32", "N": "i32", "K": "i32", "scale": "fp32", "inv_out_scale": "fp32", "inv_q_scale": "fp32"}
    jobs.append({"source": fp8_gemm_source(spec), "signature": sig, "num_warps": warps, "num_stages": stages,
                 "constexprs": dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, NUM_SMS=132),
                 "expect": ["wgmma", ".s8", "cp.async.bulk.tensor"]})
    assert aot.compile_in_subprocess(jobs) == [""] * len(jobs)
