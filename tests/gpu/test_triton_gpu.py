"""Generated Triton kernels on a real GPU at realistic sizes (skipped without CUDA or triton):
`python -m pytest tests/gpu/test_triton_gpu.py -q`.

Each check compares with a float64 reference by ||out - ref|| / ||ref|| (METHOD.md: float32 far under 1e-3,
bf16 between 1e-3 and 1e-2), draws fresh random inputs, and poisons outputs written in place with NaN first.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

from kiln.backends import triton as kt  # noqa: E402
from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.fused import fused_conv, fused_elementwise, fused_linear  # noqa: E402

DEV = torch.device("cuda")
NORM_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-12}


def ctx(opset=17):
    return KernelContext(opset=opset, device=DEV)


def rel(got, ref) -> float:
    got, ref = got.double(), ref.double()
    assert not torch.isnan(got).any() or torch.isnan(ref).any(), "NaN in the output"
    return float(torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref))


def rnd(shape, dtype, positive=False):
    x = torch.randn(shape, device=DEV, dtype=torch.float32)
    return (x.abs() + 0.1 if positive else x).to(dtype)


def region(program, n, attrs=None, consts=None):
    ins = [Value(f"x{k}", const=(consts or {}).get(k)) for k in range(n)]
    return Node("Elementwise", ins, [Value("y")], {"program": program, "attrs": attrs or []}, name="r", domain="kiln")


def run_region(program, inputs, attrs=None, consts=None, out=None):
    node = region(program, len(inputs), attrs, consts)
    layer, why = kt.try_compile_layer(node, DEV)
    assert layer is not None, why
    got = layer(ctx(), inputs, node.attrs, out=out)
    assert not layer.fallbacks, layer.fallbacks
    ref = fused_elementwise(ctx(), [x.double() if x.is_floating_point() else x for x in inputs], node.attrs)
    return layer, got, ref


GELU_CHAIN = ["Mul(i0,i1)", "Add(t0,i2)", "Gelu(t1)", "Mul(t2,i3)"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["contiguous", "bias", "strided"])
def test_elementwise_realistic(dtype, case):
    m, n = 8192, 4096
    x = rnd((m, n), dtype)
    if case == "contiguous":
        ops = [x, rnd((m, n), dtype), rnd((m, n), dtype), rnd((m, n), dtype)]
    elif case == "bias":
        ops = [x, rnd((n,), dtype), rnd((m, 1), dtype), torch.tensor(0.5, device=DEV, dtype=dtype)]
    else:
        ops = [rnd((n, m), dtype).t(), rnd((m, 2 * n), dtype)[:, ::2], rnd((n,), dtype), rnd((m, n), dtype)]
    _, got, ref = run_region(GELU_CHAIN, ops)
    assert got.dtype == dtype and rel(got, ref) < NORM_TOL[dtype]


def test_every_op_on_gpu():
    """The libdevice forms (tanh, pow, rint, log1p, expm1) the interpreter tests cannot run."""
    x, p = rnd((1000, 513), torch.float32), rnd((1000, 513), torch.float32, positive=True)
    for prog, ins in [(["Tanh(i0)", "Round(t0)"], [x * 3]), (["Pow(i0,i1)"], [p, x]), (["Softplus(i0)"], [x * 10]),
                      (["Elu(i0)", "Selu(t0)", "Celu(t1)"], [x]), (["Mish(i0)"], [x * 5]),
                      (["Gelu(i0)"], [x]), (["Sqrt(i0)", "Log(t0)", "Exp(t1)"], [p])]:
        _, got, ref = run_region(prog, ins)
        assert rel(got, ref) < 1e-6, prog
    _, got, ref = run_region(["Gelu(i0)"], [x], attrs=[["approximate=s:tanh"]])
    assert rel(got, ref) < 1e-6


def test_gelu_absolute_error():
    """GELU's erf form (A&S 7.1.26 through rcp/ex2.approx.ftz, kiln/backends/triton/ops.py) in float32 and
    float64 against float64 GELU: absolute error below 5e-7 from -30 to 30 (tails: 0 and x)."""
    for dtype in (torch.float32, torch.float64):
        x = torch.linspace(-30, 30, 600001, device=DEV, dtype=dtype)
        _, got, ref = run_region(["Gelu(i0)"], [x])
        assert float((got.double() - ref).abs().max()) < 5e-7 + 2e-7 * float(x.abs().max()) * (dtype == torch.float32)


@pytest.mark.parametrize("q_dtype", ["fp8e4m3", "int8"])
def test_layernorm_quantize_codes_exact(q_dtype):
    """kiln::LayerNormQuantize on the GPU: the quantized copy equals QuantizeLinear of Y (x / s correctly
    rounded through the reciprocal + FMA form) for many scales, on BERT's [8192, 768] shape."""
    from kiln.ops.quantized import quantize
    x = rnd((8192, 768), torch.float16) * 3 + 0.5
    w, b = rnd((768,), torch.float16) * 0.5 + 1, rnd((768,), torch.float16) * 0.1
    for scale in torch.rand(12, generator=torch.Generator().manual_seed(1)).mul(0.05).add(0.001).tolist():
        attrs = {"axis": -1, "epsilon": 1e-5, "q_scale": scale, "q_zero_point": 0, "q_dtype": q_dtype}
        node = Node("LayerNormQuantize", [Value("x"), Value("w"), Value("b")], [Value("y"), Value("yq")], attrs,
                    name="lnq", domain="kiln")
        layer, why = kt.try_compile_layer(node, DEV, opset=17)
        assert layer is not None, why
        y, yq = layer(KernelContext(opset=17, device=DEV, num_outputs=2), [x, w, b], attrs)
        assert not layer.fallbacks
        assert torch.equal(yq.float(), quantize(y, scale, 0, q_dtype).float()), scale


def test_concat_slice_written_completely():
    a, b = rnd((4096, 1024), torch.bfloat16), rnd((1024,), torch.bfloat16)
    big = torch.full((4096, 3072), float("nan"), device=DEV, dtype=torch.bfloat16)
    _, got, ref = run_region(["Add(i0,i1)", "Relu(t0)"], [a, b], out=big[:, 1024:2048])
    assert rel(big[:, 1024:2048], ref) < NORM_TOL[torch.bfloat16]
    assert torch.isnan(big[:, :1024]).all() and torch.isnan(big[:, 2048:]).all()


def test_int64_indexing():
    """More than 2**31 elements: 64-bit offsets (4.3 GB per bf16 tensor)."""
    n = 2 ** 31 + 4096
    try:
        x = torch.empty(n, device=DEV, dtype=torch.bfloat16).normal_()
    except torch.cuda.OutOfMemoryError:
        pytest.skip("not enough device memory")
    layer, got, _ = run_region(["Mul(i0,i1)"], [x, torch.tensor(2.0, device=DEV, dtype=torch.bfloat16)])
    assert layer.launch.last_spec.int64
    assert torch.equal(got[-4096:], x[-4096:] * 2) and torch.equal(got[:4096], x[:4096] * 2)
    del x, got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op,shape", [("Softmax", (4096, 4096)), ("Softmax", (256, 50000)),
                                      ("LayerNormalization", (8192, 4096)), ("LayerNormalization", (64, 40000)),
                                      ("RMSNormalization", (8192, 4096)), ("Softmax", (65536, 64)),
                                      ("LayerNormalization", (65536, 96))])
def test_rows_realistic(op, shape, dtype):
    x = rnd(shape, dtype) * 4 + 1
    n = shape[-1]
    ins = [x] + ([rnd((n,), dtype)] if op != "Softmax" else []) + ([rnd((n,), dtype)] if op.startswith("Layer") else [])
    node = Node(op, [Value(f"x{k}") for k in range(len(ins))], [Value("y")], {"axis": -1, "epsilon": 1e-5}, name=op)
    layer = kt.compile_layer(node, DEV, opset=23)
    got = layer(ctx(23), ins, node.attrs)
    assert not layer.fallbacks
    xd = x.double()
    if op == "Softmax":
        ref = torch.softmax(xd, -1)
    elif op == "LayerNormalization":
        ref = F.layer_norm(xd, (n,), ins[1].double(), ins[2].double(), 1e-5)
    else:
        ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5) * ins[1].double()
    assert got.dtype == dtype and rel(got, ref) < NORM_TOL[dtype] * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op,shape,axes", [("ReduceMean", (8192, 4096), [-1]), ("ReduceSum", (64, 512, 512), [1, 2]),
                                           ("ReduceMax", (65536, 100), [-1]), ("ReduceSumSquare", (32, 100000), [-1])])
def test_reductions_realistic(op, shape, axes, dtype):
    x = rnd(shape, dtype)
    ax = torch.tensor(axes)
    node = Node(op, [Value("x"), Value("axes", const=ax)], [Value("y")], {"keepdims": 1}, name=op)
    layer = kt.compile_layer(node, DEV, opset=18)
    got = layer(KernelContext(opset=18, device=DEV), [x, ax], node.attrs)
    assert not layer.fallbacks
    dims = [a % x.dim() for a in axes]
    xd = x.double()
    ref = {"ReduceMean": lambda: xd.mean(dims, keepdim=True), "ReduceSum": lambda: xd.sum(dims, keepdim=True),
           "ReduceMax": lambda: xd.amax(dims, keepdim=True),
           "ReduceSumSquare": lambda: (xd * xd).sum(dims, keepdim=True)}[op]()
    assert rel(got, ref) < NORM_TOL[dtype] * 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("config", [None] + list(__import__("kiln.backends.triton.gemm", fromlist=["C"]).CONFIGS))
def test_gemm_template_realistic(config, dtype):
    from kiln.backends.triton.layers import GemmLayer
    x, w, b = rnd((4000, 1024), dtype), rnd((3000, 1024), dtype) * 0.03, rnd((3000,), dtype)
    res = rnd((4000, 3000), dtype)
    node = Node("Linear", [Value("x"), Value("w"), Value("b"), Value("r")], [Value("y")],
                {"epilogue": ["gelu", "add:3"]}, name="fc", domain="kiln")
    layer = GemmLayer(node, fused_linear, config)
    big = torch.full((4000, 4000), float("nan"), device=DEV, dtype=dtype)
    layer(ctx(), [x, w, b, res], node.attrs, out=big[:, 500:3500])
    assert not layer.fallbacks
    ref = fused_linear(ctx(), [t.double() for t in (x, w, b, res)], node.attrs)
    assert rel(big[:, 500:3500], ref) < 1e-2
    assert torch.isnan(big[:, :500]).all() and torch.isnan(big[:, 3500:]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("epilogue", [["gelu"], ["add:3", "relu"], ["silu", "mul:3"], ["gelu_tanh"]])
def test_linear_epilogue_realistic(epilogue, dtype):
    x, w, b = rnd((4096, 1024), dtype), rnd((4096, 1024), dtype) * 0.03, rnd((4096,), dtype)
    res = rnd((4096, 4096), dtype)
    node = Node("Linear", [Value("x"), Value("w"), Value("b"), Value("r")], [Value("y")], {"epilogue": epilogue},
                name="fc", domain="kiln")
    layer = kt.compile_layer(node, DEV)
    got = layer(ctx(), [x, w, b, res], node.attrs)
    ref = fused_linear(ctx(), [t.double() for t in (x, w, b, res)], node.attrs)
    assert not layer.fallbacks and rel(got, ref) < 1e-2


@pytest.mark.parametrize("channels_last", [0, 1])
def test_conv_epilogue_realistic(channels_last):
    dtype = torch.float16
    x, w, b = rnd((32, 64, 56, 56), dtype), rnd((64, 64, 3, 3), dtype) * 0.05, rnd((64,), dtype)
    res = rnd((32, 64, 56, 56), dtype)
    attrs = {"pads": [1, 1, 1, 1], "epilogue": ["add:3", "relu"], "channels_last": channels_last}
    node = Node("Conv", [Value("x"), Value("w"), Value("b"), Value("r")], [Value("y")], attrs, name="c", domain="kiln")
    layer = kt.compile_layer(node, DEV)
    got = layer(ctx(), [x, w, b, res], attrs)
    ref = fused_conv(ctx(), [t.float() for t in (x, w, b, res)], attrs)
    assert not layer.fallbacks and rel(got, ref) < 1e-2


def test_cuda_graph_capture_and_replay():
    """Engines capture CUDA graphs after a warm-up: a generated kernel must replay with new input values."""
    node = region(GELU_CHAIN, 4)
    layer = kt.compile_layer(node, DEV)
    ins = [rnd((1024, 1024), torch.float16) for _ in range(4)]
    layer(ctx(), ins, node.attrs)  # warm-up compiles
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s), torch.cuda.graph(g, stream=s):
        out = layer(ctx(), ins, node.attrs)
    for _ in range(2):
        for t in ins:
            t.copy_(torch.randn_like(t))
        g.replay()
        torch.cuda.synchronize()
        ref = fused_elementwise(ctx(), [t.double() for t in ins], node.attrs)
        assert rel(out, ref) < NORM_TOL[torch.float16]


def test_engine_with_generated_layers():
    """A CUDA engine's layers swapped for generated kernels through Program's tactics give the same outputs."""
    from onnx import TensorProto, helper

    import kiln
    from kiln.engine.program import Program
    FL = TensorProto.FLOAT
    nodes = [helper.make_node("Mul", ["x", "x"], ["a"]), helper.make_node("Add", ["a", "x"], ["b"]),
             helper.make_node("Sigmoid", ["b"], ["c"]), helper.make_node("Mul", ["c", "x"], ["d"]),
             helper.make_node("LayerNormalization", ["d", "s", "bb"], ["e"], axis=-1),
             helper.make_node("Softmax", ["e"], ["y"], axis=-1)]
    rng = np.random.default_rng(0)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FL, [64, 128, 768])],
                          [helper.make_tensor_value_info("y", FL, None)],
                          [helper.make_tensor("s", FL, [768], rng.standard_normal(768).astype(np.float32)),
                           helper.make_tensor("bb", FL, [768], rng.standard_normal(768).astype(np.float32))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    engine = kiln.build(m, device="cuda")
    x = torch.randn(64, 128, 768, device=DEV)
    want = engine.create_execution_context().infer({"x": x})["y"]
    tactics = kt.choose_tactics(engine.graph.nodes, DEV)
    names = {t.name for t in tactics.values()}
    assert {"triton_layernorm", "triton_softmax"} <= names and any(n.startswith("triton_elementwise") for n in names)
    prog = Program(engine.graph, DEV, engine.registry, engine._constants, tactics)
    with torch.inference_mode():
        got = prog.run({engine.graph.inputs[0].id: x})[0]
    assert rel(got, want) < 1e-5
    assert all(not t.fallbacks for t in tactics.values())
