"""Kiln's fp8 GEMM with the epilogue fused (kiln/backends/triton/fp8_gemm.py, tactic ``fp8_triton``) on the CPU
through TRITON_INTERPRET=1: tensor-descriptor loads and stores, edge tiles, bias / GELU / residual epilogues,
float and requantized fp8 outputs, against the layer's own kernel and a float64 oracle; and the GPU form
compiled for sm_90 (wgmma on e4m3 operands, TMA copies). Timing is benchmarks/bench_fp8_gemm.py's job."""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

from kiln.backends.triton import aot  # noqa: E402
from kiln.backends.triton.fp8_gemm import CONFIGS, INTERPRET_CONFIG, Fp8GemmSpec, fp8_gemm_source  # noqa: E402
from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.quantized import qlinear, quantize  # noqa: E402
from kiln.ops.fused_steps import Instr  # noqa: E402
from kiln.tactics import space  # noqa: E402
from kiln.tactics.quantized import Fp8GemmTriton  # noqa: E402
from kiln.tune.tuner import _quantized_mismatch  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
CPU = torch.device("cpu")
CTX = KernelContext(opset=21, device=CPU)


def layer_node(k, n, epilogue, per_channel=False, bias=True, seed=0, **extra):
    g = torch.Generator().manual_seed(seed)
    wq = (torch.randn(n, k, generator=g) * 60).clamp(-448, 448).to(torch.float8_e4m3fn)
    ws = torch.rand(n, generator=g) * 2e-3 + 1e-3 if per_channel else torch.tensor([0.002])
    ins = [Value("x"), Value("wq", const=wq), Value("ws", const=ws),
           Value("b", const=torch.randn(n, generator=g)) if bias else None, Value("r")]
    attrs = {"x_scale": 0.03, "x_zero_point": 0, "x_dtype": "fp8e4m3", "epilogue": list(epilogue), **extra}
    node = Node("QLinear", ins, [Value("y")], attrs, name="ql", domain="kiln")
    return node, {v.id: v.const for v in ins if v is not None and v.const is not None}


def inputs_of(node, x, residual=None):
    consts = [v.const if v is not None else None for v in node.inputs[1:4]]
    return [x, *consts, residual]


def oracle(node, x, residual=None):
    """float64 from the same fp8 X: the arithmetic the layer stands for."""
    a = node.attrs
    xq = x.double() if a.get("input_quantized") else quantize(x, a["x_scale"], 0, "fp8e4m3").double()
    wq, ws = node.inputs[1].const.double(), node.inputs[2].const.double()
    y = (xq @ wq.t()) * (ws * a["x_scale"])
    if node.inputs[3] is not None:
        y = y + node.inputs[3].const.double()
    for step in a["epilogue"]:
        y = F.gelu(y) if step == "gelu" else F.relu(y) if step == "relu" else y + residual.double()
    return y


def rel(got, ref) -> float:
    return float((got.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("epilogue", [[], ["gelu"], ["add:4"], ["gelu", "add:4"]])
@pytest.mark.parametrize("per_channel", [False, True])
def test_float_output_matches_own_kernel_and_oracle(epilogue, per_channel):
    m, k, n = 37, 48, 40  # M, N not multiples of the 32x32 tile: edge tiles read zeros, stores clip
    node, consts = layer_node(k, n, epilogue, per_channel=per_channel)
    x = torch.randn(m, k).half()
    r = torch.randn(m, n).half() if "add:4" in epilogue else None
    layer = Fp8GemmTriton(node, consts, CPU, INTERPRET_CONFIG)
    got = layer(CTX, inputs_of(node, x, r), node.attrs)
    own = qlinear(CTX, inputs_of(node, x, r), node.attrs)
    assert not layer.fallbacks and got.dtype == own.dtype == torch.float16 and got.shape == own.shape
    ref = oracle(node, x, r)
    assert rel(got, ref) < 2e-3 and rel(own, ref) < 2e-3
    assert layer.name == "triton_quant+triton_fp8_gemm[" + "+".join(["bias"] + epilogue) + "]"


def test_three_dim_input_without_bias():
    node, consts = layer_node(32, 16, ["relu"], bias=False)
    x = torch.randn(2, 5, 32).half()
    got = Fp8GemmTriton(node, consts, CPU, INTERPRET_CONFIG)(CTX, inputs_of(node, x), node.attrs)
    assert got.shape == (2, 5, 16)
    assert rel(got, oracle(node, x)) < 2e-3


def test_requantized_fp8_output_and_fp8_input():
    """The chain QLinear -> QLinear in fp8: the first writes fp8 codes (one step off the reference on at most
    1% of them), the second reads them as is."""
    node, consts = layer_node(64, 48, ["gelu"], out_scale=0.004, out_zero_point=0, out_dtype="fp8e4m3")
    x = torch.randn(70, 64).half()
    layer = Fp8GemmTriton(node, consts, CPU, INTERPRET_CONFIG)
    got = layer(CTX, inputs_of(node, x), node.attrs)
    own = qlinear(CTX, inputs_of(node, x), node.attrs)
    assert got.dtype == own.dtype == torch.float8_e4m3fn
    assert _quantized_mismatch(got, own) is None
    assert layer.name.endswith(",requant]")

    nxt, c2 = layer_node(48, 32, ["add:4"], seed=1, input_quantized=1, x_scale=0.004, float_dtype="float16")
    r = torch.randn(70, 32).half()
    second = Fp8GemmTriton(nxt, c2, CPU, INTERPRET_CONFIG)
    assert not second.name.startswith("triton_quant")
    y = second(CTX, inputs_of(nxt, got, r), nxt.attrs)
    ref = qlinear(CTX, inputs_of(nxt, got, r), nxt.attrs)
    assert y.dtype == torch.float16 and rel(y, ref.double()) < 2e-3


@pytest.mark.parametrize("attrs,k,why", [
    ({"x_dtype": "int8"}, 32, "X is int8"),
    ({}, 40, "multiple of 16"),
    ({"out_scale": 0.1, "out_zero_point": 0, "out_dtype": "int8"}, 32, "requantization to int8"),
    ({"out_scale": 0.1, "out_zero_point": 0, "out_dtype": "fp8e4m3", "n": 24}, 32, "multiple of 16 for an 8-bit"),
])
def test_not_applicable(attrs, k, why):
    attrs = dict(attrs)
    node, consts = layer_node(k, attrs.pop("n", 16), [], **attrs)
    with pytest.raises(space.NotApplicable, match=why):
        Fp8GemmTriton(node, consts, CPU, INTERPRET_CONFIG)


def test_factory_needs_hopper_and_space_rows_list_the_configs():
    node, consts = layer_node(32, 16, [])
    with pytest.raises(space.NotApplicable, match="CUDA"):
        space.make(space.Choice("fp8_triton", {"config": list(CONFIGS[0])}), node, consts, CPU)
    rows = [r.params for r in space.DEFAULT.rows("kiln", "QLinear") if r.name == "fp8_triton"]
    assert {tuple(p["config"]) for p in rows} == set(CONFIGS)
    chosen = space.candidates(node, torch.device("cuda"), level=3)
    assert sum(c.name == "fp8_triton" for c in chosen) == len(rows)


def test_sm90_sources_compile_to_tma_and_fp8_wgmma():
    bm, bn, bk, _, warps, stages = CONFIGS[0]
    jobs = []
    for out, res, program in [(torch.float16, (torch.float16,), ("Add(i0,i1)", "Add(t0,i2)")),
                              (torch.float8_e4m3fn, (), ("Add(i0,i1)", "Gelu(t0)"))]:
        lines = tuple(map(Instr.from_json, program))
        spec = Fp8GemmSpec(False, torch.float32, lines, ((), ()), res, out, True, None, extras=(0,) if res else ())
        ty = {torch.float16: "fp16", torch.float8_e4m3fn: "fp8e4nv"}
        sig = {"a_desc": f"tensordesc<fp8e4nv[{bm}, {bk}]>", "w_desc": f"tensordesc<fp8e4nv[{bn}, {bk}]>",
               "out_desc": f"tensordesc<{ty[out]}[{bm}, {bn}]>", "b_ptr": "*fp32"}
        sig.update({f"r{j}_desc": f"tensordesc<{ty[dt]}[{bm}, {bn}]>" for j, dt in enumerate(res)})
        sig.update(M="i32", N="i32", K="i32", scale="fp32", inv_out_scale="fp32", inv_q_scale="fp32")
        jobs.append({"source": fp8_gemm_source(spec), "signature": sig, "num_warps": warps, "num_stages": stages,
                     "constexprs": dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, NUM_SMS=132),
                     "expect": ["wgmma", "e4m3", "cp.async.bulk.tensor"]})
    assert aot.compile_in_subprocess(jobs) == [""] * len(jobs)


def test_requantized_fp8_comparison():
    """The tuner's check of requantized fp8 outputs: +0 and -0 agree; one step apart is fine on a few
    elements; near zero (within 2**-8 of the largest value) codes are log-spaced noise; more than one step
    elsewhere, or too many elements off, is a mismatch."""
    ref = torch.tensor([0.0, -0.0, 2.0 ** -9, -(2.0 ** -9), 0.005, 1.0] + [2.0] * 94).to(torch.float8_e4m3fn)
    got = torch.tensor([-0.0, 0.0, 0.0, 0.0, -0.002, 1.0] + [2.0] * 94).to(torch.float8_e4m3fn)
    assert _quantized_mismatch(got, ref) is None  # 3 of 100 elements differ, all within the noise floor
    got[5] = torch.tensor(1.25).to(torch.float8_e4m3fn)  # two codes up from 1.0 (1.125, 1.25)
    assert "1 of them by more than one step" in _quantized_mismatch(got, ref)
    off = ref.clone()
    off[6:16] = torch.tensor(2.25).to(torch.float8_e4m3fn)  # one step up from 2.0, but on 10% of the elements
    assert "10.00%" in _quantized_mismatch(off, ref)
