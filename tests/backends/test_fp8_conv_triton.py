"""Kiln's fp8 TMA convolution (kiln/backends/triton/fp8_conv.py, tactic ``fp8_conv``) on the CPU through
TRITON_INTERPRET=1: 4-d / 5-d tensor-descriptor boxes with TMA's zero fill for the padding, stride 1 and 2,
edge tiles, bias / relu / residual epilogues, float and requantized fp8 outputs, the 1x1 layers through the
fp8 GEMM, against the layer's own kernel and a float64 oracle; the tile chooser; and the GPU form compiled
for sm_90. Timing is benchmarks/bench_fp8_conv.py's job."""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

from kiln.backends.triton import aot  # noqa: E402
from kiln.backends.triton.fp8_conv import CONFIGS, Fp8ConvSpec, choose_tile, fp8_conv_source  # noqa: E402
from kiln.backends.triton.fp8_gemm import CONFIGS as GEMM_CONFIGS  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.fused_steps import Instr  # noqa: E402
from kiln.ops.quantized import qconv, quantize  # noqa: E402
from kiln.tactics import space  # noqa: E402
from kiln.tactics.quantized import Fp8ConvTriton  # noqa: E402
from kiln.tune.tuner import _quantized_mismatch  # noqa: E402
from qconv_layers import conv_node, inputs_of, nhwc, oracle, rel  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
CPU = torch.device("cpu")
CTX = KernelContext(opset=21, device=CPU)
CONV_CFG = CONFIGS[0]


@pytest.mark.parametrize("k,stride,h", [(3, 1, 6), (3, 2, 8), (1, 2, 6), (1, 1, 5), (5, 1, 5), (3, 1, 9)])
@pytest.mark.parametrize("epilogue", [["relu"], ["add:4", "relu"]])
def test_float_output_matches_own_kernel_and_oracle(k, stride, h, epilogue):
    """Edge tiles (sizes not multiples of the 2x4x4 pixel box), padding by TMA's zero fill at both borders."""
    node, consts = conv_node(32, 48, k, stride, epilogue)
    x = nhwc(torch.randn(3, 32, h, h).half())
    oh = (h + 2 * (k // 2) - k) // stride + 1
    r = nhwc(torch.randn(3, 48, oh, oh).half()) if "add:4" in epilogue else None
    layer = Fp8ConvTriton(node, consts, CPU, CONV_CFG, gemm=False)
    got = layer(CTX, inputs_of(node, x, r), node.attrs)
    own = qconv(CTX, inputs_of(node, x, r), node.attrs)
    assert not layer.fallbacks and got.dtype == own.dtype == torch.float16 and got.shape == own.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    ref = oracle(node, x, r)
    assert rel(got, ref) < 2e-3 and rel(own, ref) < 2e-3
    assert layer.name.startswith(f"triton_quant+triton_fp8_conv[{k}x{k}s{stride},bias+")


def test_requantized_chain_conv_to_conv_and_gemm():
    """fp8 activations from conv to conv: a 3x3 layer writes fp8 codes (as the own kernel, within the tuner's
    check), a 1x1 layer reads them as is through the fp8 GEMM."""
    node, consts = conv_node(16, 32, 3, 1, ["relu"], out_scale=0.05, out_zero_point=0, out_dtype="fp8e4m3")
    x = nhwc(torch.randn(2, 16, 7, 7).half())
    first = Fp8ConvTriton(node, consts, CPU, CONV_CFG, gemm=False)
    y8 = first(CTX, inputs_of(node, x), node.attrs)
    own = qconv(CTX, inputs_of(node, x), node.attrs)
    assert y8.dtype == own.dtype == torch.float8_e4m3fn and first.name.endswith(",requant]")
    assert _quantized_mismatch(y8, own) is None

    nxt, c2 = conv_node(32, 16, 1, 1, ["add:4"], seed=1, input_quantized=1, x_scale=0.05, float_dtype="float16")
    r = nhwc(torch.randn(2, 16, 7, 7).half())
    second = Fp8ConvTriton(nxt, c2, CPU, (128, 128, 128, 8, 8, 3), gemm=True)
    assert second.name == "triton_fp8_gemm[bias+add:4]"
    z = second(CTX, inputs_of(nxt, y8, r), nxt.attrs)
    ref = qconv(CTX, inputs_of(nxt, y8, r), nxt.attrs)
    assert z.dtype == torch.float16 and z.is_contiguous(memory_format=torch.channels_last)
    assert rel(z, ref.double()) < 2e-3


def test_a_plain_layout_input_is_converted_and_counted():
    node, consts = conv_node(16, 16, 3, 1, [])
    x = torch.randn(1, 16, 5, 5).half()  # NCHW
    layer = Fp8ConvTriton(node, consts, CPU, CONV_CFG, gemm=False)
    got = layer(CTX, inputs_of(node, x), node.attrs)
    assert rel(got, oracle(node, x)) < 2e-3
    assert layer.conversions == {"the input converted to channels-last (an extra pass)": 1}


@pytest.mark.parametrize("c,o,k,extra,gemm,why", [
    (24, 16, 3, {}, False, "multiples of 16"),
    (16, 16, 3, {"group": 2}, False, "group 2"),
    (16, 16, 7, {"strides": [2, 2], "pads": [3, 3, 3, 3]}, False, "at most 2"),
    (16, 16, 3, {"out_scale": 0.1, "out_zero_point": 0, "out_dtype": "int8"}, False, "requantization to int8"),
    (16, 16, 3, {}, True, "1x1, stride-1"),
    (16, 16, 3, {"x_dtype": "int8"}, False, "X is int8"),
])
def test_not_applicable(c, o, k, extra, gemm, why):
    node, consts = conv_node(c, o, k, 1, [], **extra)
    with pytest.raises(space.NotApplicable, match=why):
        Fp8ConvTriton(node, consts, CPU, CONV_CFG if not gemm else (128, 128, 128, 8, 8, 3), gemm=gemm)


def test_tile_chooser_wastes_least():
    assert choose_tile(256, 56, 56) == (2, 8, 8)
    assert choose_tile(256, 28, 28) == (8, 4, 4)
    assert choose_tile(256, 14, 14) == (32, 2, 2)
    assert choose_tile(256, 7, 7) == (16, 1, 8)
    for n, h in [(1, 56), (3, 9), (256, 7)]:
        bb, bh, bw = choose_tile(n, h, h)
        assert bb * bh * bw == 128 and bh * bw >= 4


def test_space_rows_and_factory_needs_cuda():
    node, consts = conv_node(16, 16, 3, 1, [])
    with pytest.raises(space.NotApplicable, match="CUDA"):
        space.make(space.Choice("fp8_conv", {"config": list(CONFIGS[0])}), node, consts, CPU)
    rows = [r.params for r in space.DEFAULT.rows("kiln", "QConv") if r.name == "fp8_conv"]
    assert {tuple(p["config"]) for p in rows if not p.get("gemm")} == set(CONFIGS)
    assert {tuple(p["config"]) for p in rows if p.get("gemm")} == set(GEMM_CONFIGS)


def test_sm90_sources_compile_to_tma_and_fp8_wgmma():
    jobs = []
    for stride2, out, res, q_out in [(False, torch.float8_e4m3fn, (), False), (True, torch.float16, (torch.float16,), True),
                                     (False, torch.float8_e4m3fn, (torch.float8_e4m3fn,), False)]:
        if res and res[0] == torch.float8_e4m3fn:  # addq: the fp8 shortcut times its scale
            program, extras = ("Add(i0,i1)", "Mul(i2,i3)", "Add(t0,t1)", "Relu(t2)"), (0, 0.0625)
        else:
            program, extras = ("Add(i0,i1)", "Relu(t0)") + (("Add(t1,i2)",) if res else ()), (0,) if res else ()
        lines = tuple(map(Instr.from_json, program))
        spec = Fp8ConvSpec(stride2, torch.float32, lines, ((),) * len(program), res, out, True, q_out, extras)
        ty = {torch.float16: "fp16", torch.float8_e4m3fn: "fp8e4nv"}
        bb, bh, bw = 2, 8, 8
        bn, bk, gm, warps, stages = CONFIGS[0]
        xbox = f"[{bb}, {bh}, 1, {bw}, {bk}]" if stride2 else f"[{bb}, {bh}, {bw}, {bk}]"
        sig = {"x_desc": f"tensordesc<fp8e4nv{xbox}>", "w_desc": f"tensordesc<fp8e4nv[{bn}, {bk}]>",
               "out_desc": f"tensordesc<{ty[out]}[{bb}, {bh}, {bw}, {bn}]>", "scale_ptr": "*fp32", "b_ptr": "*fp32"}
        sig.update({f"r{j}_desc": f"tensordesc<{ty[dt]}[{bb}, {bh}, {bw}, {bn}]>" for j, dt in enumerate(res)})
        if q_out:
            sig["q_desc"] = f"tensordesc<fp8e4nv[{bb}, {bh}, {bw}, {bn}]>"
        sig.update(NB="i32", OH="i32", OW="i32", O="i32", inv_out_scale="fp32", inv_q_scale="fp32")
        jobs.append({"source": fp8_conv_source(spec), "signature": sig, "num_warps": warps, "num_stages": stages,
                     "constexprs": dict(C=128, KH=3, KW=3, PH=1, PW=1, BB=bb, BH=bh, BW=bw, BLOCK_N=bn, BLOCK_K=bk,
                                        GROUP_M=gm, NUM_SMS=132),
                     "expect": ["wgmma", "e4m3", "cp.async.bulk.tensor"]})
    assert aot.compile_in_subprocess(jobs) == [""] * len(jobs)


@pytest.mark.parametrize("gemm", [False, True])
def test_second_fp8_copy_of_a_float_output(gemm):
    """A block's output: float (for the residual add) and its fp8 copy (for the next block's convolutions),
    both stored by the one kernel; the copy is quantize(Y as stored), as the own kernel computes it."""
    k = 1 if gemm else 3
    node, consts = conv_node(16, 32, k, 1, ["add:4", "relu"], q_scale=0.05, q_zero_point=0, q_dtype="fp8e4m3")
    x, r = nhwc(torch.randn(2, 16, 6, 6).half()), nhwc(torch.randn(2, 32, 6, 6).half())
    layer = Fp8ConvTriton(node, consts, CPU, (128, 128, 128, 8, 8, 3) if gemm else CONV_CFG, gemm=gemm)
    y, yq = layer(CTX, inputs_of(node, x, r), node.attrs)
    own_y, own_q = qconv(CTX, inputs_of(node, x, r), node.attrs)
    assert y.dtype == own_y.dtype == torch.float16 and yq.dtype == own_q.dtype == torch.float8_e4m3fn
    assert yq.is_contiguous(memory_format=torch.channels_last) and layer.name.endswith(",+fp8 copy]")
    assert rel(y, own_y.double()) < 2e-3 and _quantized_mismatch(yq, own_q) is None
    assert torch.equal(yq.float(), quantize(y, 0.05, 0, "fp8e4m3").float())  # the copy of what was stored


@pytest.mark.parametrize("gemm", [False, True])
def test_fp8_shortcut_addq(gemm):
    """The residual stream in fp8: the shortcut arrives as fp8 codes, ``addq:4:S`` adds codes * S in the tile,
    and the block output is requantized for the next block."""
    k = 1 if gemm else 3
    node, consts = conv_node(16, 32, k, 1, ["addq:4:0.0625", "relu"], input_quantized=1, x_scale=0.05,
                             out_scale=0.05, out_zero_point=0, out_dtype="fp8e4m3")
    x = nhwc(torch.randn(2, 16, 6, 6) * 4).to(torch.float8_e4m3fn)
    r = nhwc(torch.randn(2, 32, 6, 6) * 8).to(torch.float8_e4m3fn)
    layer = Fp8ConvTriton(node, consts, CPU, (128, 128, 128, 8, 8, 3) if gemm else CONV_CFG, gemm=gemm)
    got = layer(CTX, inputs_of(node, x, r), node.attrs)
    own = qconv(CTX, inputs_of(node, x, r), node.attrs)
    assert got.dtype == own.dtype == torch.float8_e4m3fn and _quantized_mismatch(got, own) is None
    a = node.attrs
    y = F.conv2d(x.double(), node.inputs[1].const.double(), padding=k // 2) * \
        (node.inputs[2].const.double() * a["x_scale"]).view(1, -1, 1, 1) + node.inputs[3].const.double().view(1, -1, 1, 1)
    ref = quantize(F.relu(y + r.double() * 0.0625).float(), 0.05, 0, "fp8e4m3")
    assert _quantized_mismatch(got, ref) is None
