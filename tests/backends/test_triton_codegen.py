"""Generated Triton kernels against their oracles, on the CPU through TRITON_INTERPRET=1 (small shapes).

Oracles: the ops' own kernels (kiln::Elementwise's reference, fused.py's Linear/Conv) evaluated in float64,
onnx.reference for the norms and Softmax. The GPU form of the generated sources is compiled for sm_90 too
(Triton runs its whole compiler on the host), so GPU-only paths (libdevice) are checked without a GPU.
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from kiln.backends import triton as kt  # noqa: E402
from kiln.backends.triton import aot, cache, rows  # noqa: E402
from kiln.backends.triton.codegen import ElementwiseSpec, elementwise_source  # noqa: E402
from kiln.backends.triton.launch import ElementwiseLaunch  # noqa: E402
from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.fused import fused_conv, fused_elementwise, fused_linear  # noqa: E402
from kiln.ops.fused_steps import Instr  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on masked-off lanes
CPU = torch.device("cpu")
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


def ctx(opset=17, n_out=1):
    return KernelContext(opset=opset, device=CPU, num_outputs=n_out)


def rand(shape, dtype, gen, positive=False):
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if positive:
        x = x.abs() + 0.1
    return x.to(dtype)


def region(program, n_inputs, attrs=None, consts=None):
    ins = [Value(f"x{k}", const=(consts or {}).get(k)) for k in range(n_inputs)]
    return Node("Elementwise", ins, [Value("y")], {"program": program, "attrs": attrs or []}, name="r", domain="kiln")


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    g, r = got.double(), ref.double()
    assert torch.isnan(g).equal(torch.isnan(r)), "NaN positions differ"
    g, r = torch.nan_to_num(g), torch.nan_to_num(r)
    return float((g - r).abs().max() / max(r.abs().max(), 1e-30))


def check_region(program, inputs, attrs=None, consts=None, opset=17, tol=None):
    """Generated kernel vs kiln::Elementwise's reference (float64 for float inputs)."""
    node = region(program, len(inputs), attrs, {k: inputs[k] for k in (consts or ())})
    layer, why = kt.try_compile_layer(node, CPU, opset=opset, on_cpu=True)
    assert layer is not None, why
    got = layer(ctx(opset), list(inputs), node.attrs)
    assert not layer.fallbacks, layer.fallbacks
    up = [x.double() if x.is_floating_point() else x for x in inputs]
    ref = fused_elementwise(ctx(opset), up, node.attrs)
    assert got.shape == ref.shape
    fdt = next((x.dtype for x in inputs if x.is_floating_point()), None)
    if got.is_floating_point():
        assert got.dtype == (ref.dtype if fdt is None else fdt)
        assert rel_err(got, ref) <= (tol or TOL[got.dtype]), (program, got.dtype, rel_err(got, ref))
    else:
        assert got.dtype == ref.dtype and got.equal(ref), program
    return layer


# One row per op (and the attributes it reads): (program, input kinds, attrs per line).
# Input kinds: "x" a float tensor, "p" a positive one, "b" bool, "s" a scalar float, "c" a float constant
UNARY = ["Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Sin", "Cos", "Erf", "Round", "Tanh",
         "Sign", "Relu", "Sigmoid", "Gelu", "LeakyRelu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Swish",
         "Elu", "Selu", "Celu", "ThresholdedRelu", "Mish"]
POSITIVE = {"Sqrt", "Log"}
ROWS = [([f"{op}(i0)"], "p" if op in POSITIVE else "x", []) for op in UNARY] + [
    (["Gelu(i0)"], "x", [["approximate=s:tanh"]]),
    (["LeakyRelu(i0)"], "x", [["alpha=f:0.3"]]),
    (["HardSigmoid(i0)"], "x", [["alpha=f:0.25", "beta=f:0.4"]]),
    (["Elu(i0)"], "x", [["alpha=f:0.7"]]),
    (["Add(i0,i1)"], "xx", []), (["Sub(i0,i1)"], "xx", []), (["Mul(i0,i1)"], "xx", []), (["Div(i0,i1)"], "xp", []),
    (["Pow(i0,i1)"], "pp", []), (["Pow(i0,i1)"], "xc", []), (["Max(i0,i1,i2)"], "xxx", []),
    (["Min(i0,i1)"], "xx", []), (["Sum(i0,i1,i2)"], "xxx", []), (["Mean(i0,i1)"], "xx", []),
    (["Clip(i0,i1,i2)"], "xss", []),
    (["Less(i0,i1)", "Where(t0,i0,i1)"], "xx", []), (["Greater(i0,i1)", "Not(t0)"], "xx", []),
    (["Equal(i0,i1)", "Or(t0,i2)"], "xxb", []), (["LessOrEqual(i0,i1)", "And(t0,i2)"], "xxb", []),
    (["GreaterOrEqual(i0,i1)", "Xor(t0,i2)"], "xxb", []), (["IsNaN(i0)"], "x", []), (["IsInf(i0)"], "x", []),
    (["Cast(i0)", "Cast(t0)"], "x", [["to=i:10"], ["to=i:1"]]), (["Cast(i0)"], "x", [["to=i:7"]]),
    # a layernorm-like chain with a scalar constant and broadcasts
    (["Sub(i0,i1)", "Pow(t0,i2)", "Add(t1,i3)", "Sqrt(t2)", "Div(t0,t3)", "Mul(t4,i4)"], "xxcsx", []),
]


def make_inputs(kinds, shapes, dtype, gen):
    out, consts = [], []
    for k, (kind, shape) in enumerate(zip(kinds, shapes)):
        if kind == "b":
            out.append(torch.rand(shape, generator=gen) > 0.5)
        elif kind in "sc":
            out.append(torch.tensor(2.0 if kind == "c" else float(torch.rand((), generator=gen)) - 0.3, dtype=dtype))
            if kind == "c":
                consts.append(k)
        else:
            out.append(rand(shape, dtype, gen, positive=kind == "p"))
    return out, consts


@pytest.mark.parametrize("program,kinds,attrs", ROWS, ids=lambda v: v if isinstance(v, str) else None)
def test_every_op_f32(program, kinds, attrs):
    gen = torch.Generator().manual_seed(len(program) * 31 + len(kinds))
    shapes = [(5, 37) for _ in kinds]
    inputs, consts = make_inputs(kinds, shapes, torch.float32, gen)
    if program == ["IsNaN(i0)"] or program == ["IsInf(i0)"]:
        inputs[0][0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    check_region(program, inputs, [a for a in attrs], consts)


CHAIN = ["Add(i0,i1)", "Mul(t0,i2)", "Gelu(t1)", "Sub(t2,i3)"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shapes", [
    [(4, 8, 33), (4, 8, 33), (4, 8, 33), (4, 8, 33)],  # contiguous fast path
    [(4, 8, 33), (33,), (8, 1), ()],                   # broadcasts, a 0-d scalar
    [(2, 1, 6, 5), (3, 1, 5), (1,), (2, 3, 1, 1)],     # output shape from several operands
], ids=["contiguous", "broadcast", "outer"])
def test_chain_broadcast_dtypes(dtype, shapes):
    gen = torch.Generator().manual_seed(1)
    check_region(CHAIN, [rand(s, dtype, gen) for s in shapes])


def test_noncontiguous_and_expanded_operands():
    gen = torch.Generator().manual_seed(2)
    a = rand((6, 5, 7), torch.float32, gen).permute(2, 0, 1)           # transposed
    b = rand((7, 12), torch.float32, gen)[:, ::2].unsqueeze(-1)         # a strided slice, broadcast
    c = rand((5,), torch.float32, gen).expand(7, 6, 5)                 # an expanded view (stride 0)
    d = rand((7, 6, 5), torch.float16, gen)
    layer = check_region(["Add(i0,i1)", "Mul(t0,i2)", "Tanh(t1)", "Cast(i3)", "Add(t2,t3)"],
                         [a, b, c, d], [[], [], [], ["to=i:1"], []])
    layouts = layer.launch.last_spec.layouts
    assert sum(lay.startswith("strided") for lay in layouts) >= 2, layouts
    assert any("0" in lay for lay in layouts if lay.startswith("strided")), layouts  # broadcast terms left out


def test_ints_and_bools():
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(-50, 50, (4, 9), generator=gen, dtype=torch.int32)
    b = torch.randint(-50, 50, (9,), generator=gen, dtype=torch.int32)
    check_region(["Mul(i0,i1)", "Add(t0,i0)", "Relu(t1)", "Max(t2,i1)", "Greater(t3,i0)"], [a, b])
    c = torch.randint(-2 ** 40, 2 ** 40, (3, 5), generator=gen, dtype=torch.int64)
    check_region(["Neg(i0)", "Abs(t0)", "Sub(t1,i0)"], [c])


def test_constant_scalars_become_literals():
    gen = torch.Generator().manual_seed(4)
    x = rand((3, 16), torch.float32, gen)
    two, eps = torch.tensor(2.0), torch.tensor([1e-5])
    node = region(["Pow(i0,i1)", "Add(t0,i2)", "Sqrt(t1)"], 3, consts={1: two, 2: eps})
    layer = kt.compile_layer(node, CPU, on_cpu=True)
    got = layer(ctx(), [x, two, eps], node.attrs)
    torch.testing.assert_close(got, torch.sqrt(x * x + 1e-5), rtol=1e-6, atol=1e-7)
    spec = layer.launch.last_spec
    assert spec.layouts[1][0] == "const" and spec.layouts[2][0] == "const"
    src = elementwise_source(spec, interpret=True).source
    assert "_pow" not in src and "(a0 * a0)" in src and "in1_ptr" not in src


def test_write_into_concat_slice():
    gen = torch.Generator().manual_seed(5)
    a, b = rand((4, 6), torch.float32, gen), rand((6,), torch.float32, gen)
    node = region(["Add(i0,i1)", "Relu(t0)"], 2)
    layer = kt.compile_layer(node, CPU, on_cpu=True)
    big = torch.full((4, 20), float("nan"))
    view = big[:, 7:13]
    got = layer(ctx(), [a, b], node.attrs, out=view)
    assert got.data_ptr() == view.data_ptr()
    torch.testing.assert_close(big[:, 7:13], torch.relu(a + b))
    assert torch.isnan(big[:, :7]).all() and torch.isnan(big[:, 13:]).all()
    assert layer.launch.last_spec.out_layout == "strided"


def test_unsupported_falls_back_and_says_why():
    node = region(["Add(i0,i1)", "Mod(t0,i1)"], 2)
    layer, why = kt.try_compile_layer(node, CPU, on_cpu=True)
    assert layer is None and "Mod" in why
    node = region(["Div(i0,i1)", "Neg(t0)"], 2)  # integer Div truncates: the op's kernel runs it
    layer = kt.compile_layer(node, CPU, on_cpu=True)
    a = torch.tensor([7, -7, 9], dtype=torch.int32)
    b = torch.tensor([2, 2, -4], dtype=torch.int32)
    got = layer(ctx(), [a, b], node.attrs)
    assert got.tolist() == [-3, 3, 2]
    assert any("Div" in r for r in layer.fallbacks)


def test_cache_hits(tmp_path):
    cache.set_cache_dir(tmp_path)
    cache.clear_memory()
    program = ["Mul(i0,i1)", "Sigmoid(t0)", "Mul(t1,i0)"]
    x, y = torch.randn(8, 8), torch.randn(8, 8)
    before = dict(cache.stats)
    l1 = kt.compile_layer(region(program, 2), CPU, on_cpu=True)
    r1 = l1(ctx(), [x, y], {})
    assert cache.stats["generated"] == before["generated"] + 1 and cache.stats["disk_writes"] == before["disk_writes"] + 1
    files = list(tmp_path.glob("kiln_*.py"))
    assert len(files) == 1 and "tl.sigmoid" in files[0].read_text()
    l2 = kt.compile_layer(region(program, 2), CPU, on_cpu=True)  # another layer, same description: the same kernel
    r2 = l2(ctx(), [x, y], {})
    assert cache.stats["memory_hits"] == before["memory_hits"] + 1 and cache.stats["generated"] == before["generated"] + 1
    assert l1.launch._plans and next(iter(l1.launch._plans.values()))[0] is next(iter(l2.launch._plans.values()))[0]
    cache.clear_memory()  # a new process: generated again, found on disk, not rewritten
    l3 = kt.compile_layer(region(program, 2), CPU, on_cpu=True)
    l3(ctx(), [x, y], {})
    assert cache.stats["disk_hits"] == before["disk_hits"] + 1 and cache.stats["disk_writes"] == before["disk_writes"] + 1
    files[0].write_text("tampered")  # a file that does not match its hash is rewritten, never trusted
    cache.clear_memory()
    r4 = kt.compile_layer(region(program, 2), CPU, on_cpu=True)(ctx(), [x, y], {})
    assert "tl.sigmoid" in files[0].read_text()
    torch.testing.assert_close(r1, r2)
    torch.testing.assert_close(r1, r4)


# -- row reductions ------------------------------------------------------------------------------------------


def onnx_ref(op, inputs, attrs, opset, n_out=1):
    names = [f"i{k}" for k in range(len(inputs))]
    outs = ["y"] + [f"o{k}" for k in range(1, n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    tp = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, tp[x.dtype.type], x.shape)
                                        for n, x in zip(names, inputs)],
                          [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(m).run(None, dict(zip(names, inputs)))[0]


def row_node(op, n_inputs, attrs):
    return Node(op, [Value(f"x{k}") for k in range(n_inputs)], [Value("y")], attrs, name=op)


@pytest.mark.parametrize("looped", [False, True], ids=["one-block", "looped"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op,attrs,opset", [
    ("Softmax", {"axis": -1}, 13), ("Softmax", {"axis": 1}, 11),
    ("LayerNormalization", {"axis": -1, "epsilon": 1e-5}, 17), ("LayerNormalization", {"axis": 1}, 17),
    ("RMSNormalization", {"axis": -1, "epsilon": 1e-6}, 23),
])
def test_rows_against_onnx_reference(op, attrs, opset, dtype, looped, monkeypatch):
    if looped:
        monkeypatch.setattr(rows, "INTERPRET_MAX_COLS", 32)
    gen = torch.Generator().manual_seed(6)
    x = rand((3, 5, 100), dtype, gen) * 3 + 1
    n = 100 if attrs.get("axis") == -1 else 500
    ins = [x]
    if op != "Softmax":
        ins.append(rand((n,) if attrs.get("axis") == -1 else (5, 100), dtype, gen))
    if op == "LayerNormalization":
        ins.append(rand(ins[1].shape, dtype, gen))
    node = row_node(op, len(ins), attrs)
    layer, why = kt.try_compile_layer(node, CPU, opset=opset, on_cpu=True)
    assert layer is not None, why
    got = layer(ctx(opset), ins, attrs)
    assert not layer.fallbacks, layer.fallbacks
    if opset >= 13:
        ref = onnx_ref(op, [t.double().numpy() for t in ins], attrs, opset)
    else:  # onnx.reference's Softmax ignores the 2-D coercion of opsets < 13: the op's own kernel does not
        from kiln.ops import default_registry
        ref = default_registry().get("", op).kernel(ctx(opset), [t.double() for t in ins], attrs).numpy()
    assert got.dtype == dtype and tuple(got.shape) == ref.shape
    assert rel_err(got, torch.from_numpy(ref)) <= TOL[dtype] * (4 if dtype != torch.float32 else 5), op


def test_softmax_not_last_axis_falls_back():
    node = row_node("Softmax", 1, {"axis": 0})
    layer = kt.compile_layer(node, CPU, opset=13, on_cpu=True)
    x = torch.randn(4, 6)
    torch.testing.assert_close(layer(ctx(13), [x], {"axis": 0}), torch.softmax(x, 0))
    assert layer.fallbacks


def test_layernorm_rows_into_slice():
    x, w, b = torch.randn(6, 32), torch.randn(32), torch.randn(32)
    node = row_node("LayerNormalization", 3, {"axis": -1})
    layer = kt.compile_layer(node, CPU, on_cpu=True)
    big = torch.full((6, 64), float("nan"))
    layer(ctx(), [x, w, b], {"axis": -1}, out=big[:, 32:])
    torch.testing.assert_close(big[:, 32:], torch.nn.functional.layer_norm(x, (32,), w, b), rtol=1e-5, atol=1e-5)
    assert torch.isnan(big[:, :32]).all()


@pytest.mark.parametrize("looped", [False, True], ids=["one-block", "looped"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("q_dtype", ["fp8e4m3", "int8"])
def test_layernorm_quantize_rows(q_dtype, dtype, looped, monkeypatch):
    """kiln::LayerNormQuantize: Y as the LayerNorm kernel writes it, and Y quantized from Y as stored, the same
    codes QuantizeLinear gives for that Y (the division correctly rounded, ties to even, saturation)."""
    from kiln.ops.quantized import quantize
    if looped:
        monkeypatch.setattr(rows, "INTERPRET_MAX_COLS", 32)
    gen = torch.Generator().manual_seed(3)
    x = rand((4, 7, 96), dtype, gen) * 3 + 1
    w, b = rand((96,), dtype, gen), rand((96,), dtype, gen)
    attrs = {"axis": -1, "epsilon": 1e-5, "q_scale": 0.011, "q_zero_point": 0, "q_dtype": q_dtype}
    node = Node("LayerNormQuantize", [Value("x"), Value("w"), Value("b")], [Value("y"), Value("yq")], attrs,
                name="lnq", domain="kiln")
    layer, why = kt.try_compile_layer(node, CPU, opset=17, on_cpu=True)
    assert layer is not None, why
    y, yq = layer(ctx(17, 2), [x, w, b], attrs)
    assert not layer.fallbacks and layer.name == "triton_layernorm+quantize"
    ref_y = torch.nn.functional.layer_norm(x.double(), (96,), w.double(), b.double())
    assert y.dtype == dtype and rel_err(y, ref_y) <= TOL[dtype] * 4
    want = quantize(y, 0.011, 0, q_dtype)
    assert yq.dtype == want.dtype and torch.equal(yq.float(), want.float())
    assert (yq.float().abs() == (448 if q_dtype == "fp8e4m3" else 127)).any()  # some values saturate


# -- epilogues ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("epilogue", [["gelu"], ["add:3", "relu"], ["silu", "mul:3"], ["clip:0:6"],
                                      ["leaky_relu:0.1", "hardsigmoid:0.2:0.5"], ["gelu_tanh", "softplus"]])
def test_linear_epilogue(epilogue, dtype):
    gen = torch.Generator().manual_seed(7)
    x, w, b = rand((2, 5, 24), dtype, gen), rand((16, 24), dtype, gen) * 0.2, rand((16,), dtype, gen)
    res = rand((2, 5, 16), dtype, gen)
    node = Node("Linear", [Value("x"), Value("w"), Value("b"), Value("r")], [Value("y")], {"epilogue": epilogue},
                name="fc", domain="kiln")
    layer, why = kt.try_compile_layer(node, CPU, on_cpu=True)
    assert layer is not None, why
    got = layer(ctx(), [x, w, b, res], node.attrs)
    assert not layer.fallbacks
    ref = fused_linear(ctx(), [x.double(), w.double(), b.double(), res.double()], node.attrs)
    assert got.dtype == dtype and rel_err(got, ref) <= (2e-5 if dtype == torch.float32 else 3e-2)


@pytest.mark.parametrize("channels_last", [0, 1])
def test_conv_bias_epilogue(channels_last):
    gen = torch.Generator().manual_seed(8)
    x, w, b = rand((2, 3, 9, 9), torch.float32, gen), rand((8, 3, 3, 3), torch.float32, gen), \
        rand((8,), torch.float32, gen)
    res = rand((2, 8, 9, 9), torch.float32, gen)
    attrs = {"pads": [1, 1, 1, 1], "epilogue": ["add:3", "relu"], "channels_last": channels_last}
    node = Node("Conv", [Value("x"), Value("w"), Value("b"), Value("r")], [Value("y")], attrs, name="c",
                domain="kiln")
    layer = kt.compile_layer(node, CPU, on_cpu=True)
    got = layer(ctx(), [x, w, b, res], attrs)
    assert not layer.fallbacks and layer.name.startswith("cudnn+triton_epilogue")
    ref = fused_conv(ctx(), [x.double(), w.double(), b.double(), res.double()], attrs)
    assert rel_err(got, ref) <= 2e-5


def test_plain_linear_is_left_to_the_library():
    node = Node("Linear", [Value("x"), Value("w"), Value("b")], [Value("y")], {}, name="fc", domain="kiln")
    layer, why = kt.try_compile_layer(node, CPU, on_cpu=True)
    assert layer is None and "no epilogue" in why


# -- the GPU form of the sources -------------------------------------------------------------------------


def test_gpu_sources_compile_for_sm90():
    """Each generator's GPU text (libdevice, int64 indices, looped rows) through Triton's compiler to PTX, in a
    subprocess without the interpreter."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no GPU backend")
    gen = torch.Generator().manual_seed(9)
    jobs = []
    program = ["Add(i0,i1)", "Tanh(t0)", "Pow(t1,i2)", "Round(t2)", "Elu(t3)", "Softplus(t4)", "Max(t5,i0)",
               "Sigmoid(t6)", "Gelu(t7)", "Less(t8,i1)", "Where(t9,t8,i0)"]
    launch = ElementwiseLaunch([Instr.from_json(line) for line in program], [{}] * len(program), 17)
    launch([rand((4, 6, 8), torch.float16, gen), rand((6, 1), torch.bfloat16, gen), torch.tensor(1.5)])
    spec = launch.last_spec
    g = elementwise_source(spec, interpret=False)
    assert "libdevice.tanh" in g.source and "libdevice.pow" in g.source
    jobs.append({"source": g.source, "signature": aot.elementwise_signature(spec, g), "constexprs": {"BLOCK": 1024}})
    # every op of the table in two long chains (floats; bool/int), with an inlined constant, a strided output
    # and 64-bit indices
    chain = [f"{op}({'i0' if k == 0 else f't{k - 1}'})" for k, op in enumerate(UNARY)]
    n = len(chain)
    chain += [f"Add(t{n - 1},i1)", f"Sub(t{n},i1)", f"Mul(t{n + 1},i1)", f"Div(t{n + 2},i1)", f"Pow(t{n + 3},i1)",
              f"Pow(t{n + 4},i2)", f"Min(t{n + 5},i1)", f"Sum(t{n + 6},i1,i0)", f"Mean(t{n + 7},i1)",
              f"Clip(t{n + 8},i1,i2)", f"IsInf(t{n + 9})", f"IsNaN(t{n + 9})", f"Xor(t{n + 10},t{n + 11})",
              f"Not(t{n + 12})", f"Cast(t{n + 13})", f"Cast(t{n + 14})"]
    chain_attrs = [()] * (len(chain) - 2) + [(("to", 7),), (("to", 16),)]
    ints = ["Mul(i0,i1)", "Add(t0,i2)", "Relu(t1)", "Max(t2,i1)", "Sign(t3)", "Abs(t4)", "Neg(t5)", "Greater(t6,i0)",
            "Equal(t6,i1)", "And(t7,t8)", "Or(t9,t7)", "Where(t10,t6,i1)", "Clip(t11,i2,i1)", "Cast(t12)"]
    for prog, pattrs, dts, lays in [
        (chain, chain_attrs, (torch.float32, torch.float16, torch.float32), ("flat", "strided:ss", ("const", 2.0))),
        (ints, [()] * (len(ints) - 1) + [(("to", 1),)], (torch.int64, torch.int64, torch.int32),
         ("strided:s0", "flat", ("const", 3))),
    ]:
        spec = ElementwiseSpec(tuple(map(Instr.from_json, prog)), tuple(pattrs), 17, dts, lays, 2, "strided", None,
                               True)
        g = elementwise_source(spec, interpret=False)
        jobs.append({"source": g.source, "signature": aot.elementwise_signature(spec, g),
                     "constexprs": {"BLOCK": 2048}, "num_warps": 8})
    for kind, looped, q in (("layernorm", False, None), ("layernorm", True, None), ("softmax", False, None),
                            ("softmax", True, None), ("rmsnorm", True, None), ("mean", False, None), ("max", True, None),
                            ("layernorm", False, "fp8e4m3"), ("layernorm", True, "int8")):
        rs = rows.RowSpec(kind, torch.bfloat16, torch.bfloat16 if kind in ("layernorm", "rmsnorm") else None,
                          torch.bfloat16 if kind == "layernorm" else None, torch.bfloat16, looped, True, q)
        sig = {"out_ptr": "*bf16", "x_ptr": "*bf16"}
        if rs.w_dtype is not None:
            sig["w_ptr"] = "*bf16"
        if rs.b_dtype is not None:
            sig["b_ptr"] = "*bf16"
        if q is not None:
            sig.update(q_ptr="*fp8e4nv" if q == "fp8e4m3" else "*i8", scale="fp32", inv_scale="fp32")
        sig.update({"M": "i32", "N": "i32", "x_stride": "i64", "out_stride": "i64", "eps": "fp32"})
        jobs.append({"source": rows.row_source(rs, interpret=False), "signature": sig,
                     "constexprs": {"ROWS": 1 if looped else 2, "BLOCK": 1024}, "num_warps": 8})
    from kiln.backends.triton.epilogue import epilogue_program
    from kiln.backends.triton.gemm import CONFIGS, GemmSpec, gemm_source
    prog, pattrs, _ = epilogue_program(["gelu", "add:3"], True)
    gs = GemmSpec(torch.bfloat16, torch.bfloat16, torch.bfloat16, tuple(prog),
                  tuple(tuple(sorted(a.items())) for a in pattrs), (torch.bfloat16,), torch.bfloat16, False)
    bm, bn, bk, gm, warps, stages = CONFIGS[0]
    sig = {"out_ptr": "*bf16", "x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "r0_ptr": "*bf16",
           **{k: "i32" for k in ("M", "N", "K", "sxm", "sxk", "swn", "swk", "som", "son", "r0_s0", "r0_s1")}}
    jobs.append({"source": gemm_source(gs, interpret=False), "signature": sig, "num_warps": warps,
                 "num_stages": stages, "constexprs": {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": gm},
                 "expect": ["wgmma"]})  # Hopper's warpgroup MMA, not the older mma.sync
    errors = aot.compile_in_subprocess(jobs)
    assert errors == [""] * len(jobs), errors


# -- through an engine -------------------------------------------------------------------------------------


def test_engine_layers_through_program():
    """A built engine's layers replaced by generated kernels (the tactic mechanism) give the same outputs."""
    import kiln
    from kiln.engine.program import Program
    F = TensorProto.FLOAT
    nodes = [helper.make_node("Mul", ["x", "x"], ["a"]), helper.make_node("Add", ["a", "x"], ["b"]),
             helper.make_node("Sigmoid", ["b"], ["c"]), helper.make_node("Mul", ["c", "x"], ["d"]),
             helper.make_node("LayerNormalization", ["d", "s", "bb"], ["e"], axis=-1),
             helper.make_node("Softmax", ["e"], ["y"], axis=-1)]
    rng = np.random.default_rng(0)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [3, 4, 16])],
                          [helper.make_tensor_value_info("y", F, None)],
                          [helper.make_tensor("s", F, [16], rng.standard_normal(16).astype(np.float32)),
                           helper.make_tensor("bb", F, [16], rng.standard_normal(16).astype(np.float32))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    engine = kiln.build(m)
    x = rng.standard_normal((3, 4, 16)).astype(np.float32)
    want = engine.create_execution_context().infer({"x": x})["y"]
    reasons: dict = {}
    tactics = kt.choose_tactics(engine.graph.nodes, CPU, reasons=reasons, on_cpu=True)
    assert {t.name for t in tactics.values()} >= {"triton_layernorm", "triton_softmax"}
    assert any(t.name.startswith("triton_elementwise") for t in tactics.values())
    prog = Program(engine.graph, CPU, engine.registry, engine._constants, tactics)
    env = {engine.graph.inputs[0].id: torch.from_numpy(x)}
    got = prog.run(env)[0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert all(not t.fallbacks for t in tactics.values())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("epilogue", [[], ["gelu", "add:3"], ["relu", "mul:3"]])
def test_gemm_template_with_fused_epilogue(epilogue, dtype):
    from kiln.backends.triton.layers import GemmLayer
    gen = torch.Generator().manual_seed(10)
    x, w, b = rand((3, 20, 72), dtype, gen), rand((40, 72), dtype, gen) * 0.2, rand((40,), dtype, gen)
    res = rand((3, 20, 40), dtype, gen)
    node = Node("Linear", [Value("x"), Value("w"), Value("b"), Value("r")], [Value("y")], {"epilogue": epilogue},
                name="fc", domain="kiln")
    layer = GemmLayer(node, fused_linear)
    got = layer(ctx(), [x, w, b, res], node.attrs)
    assert not layer.fallbacks, layer.fallbacks
    ref = fused_linear(ctx(), [x.double(), w.double(), b.double(), res.double()], node.attrs)
    assert got.dtype == dtype and rel_err(got, ref) <= 1e-2
    big = torch.full((60, 100), float("nan"), dtype=dtype)  # into a concat slice
    layer(ctx(), [x.reshape(60, 72), w, b, res.reshape(60, 40)], node.attrs, out=big[:, 30:70])
    assert rel_err(big[:, 30:70], ref.reshape(60, 40)) <= 1e-2 and torch.isnan(big[:, :30]).all()
    names = [c.name for c in kt.candidates(node, CPU, on_cpu=True)]
    from kiln.backends.triton.gemm import CONFIGS
    assert len(names) == len(CONFIGS) + (1 if epilogue else 0)  # bias alone: cuBLAS needs no extra pass


@pytest.mark.parametrize("looped", [False, True], ids=["one-block", "looped"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op,axes,keepdims", [("ReduceMean", [-1], 1), ("ReduceSum", [1, 2], 0),
                                              ("ReduceSumSquare", [2], 1), ("ReduceMax", [-1], 0),
                                              ("ReduceMin", [-2, -1], 1)])
def test_reductions_against_onnx_reference(op, axes, keepdims, dtype, looped, monkeypatch):
    if looped:
        monkeypatch.setattr(rows, "INTERPRET_MAX_COLS", 32)
    gen = torch.Generator().manual_seed(11)
    x = rand((4, 6, 50), dtype, gen)
    opset = 18
    ax = torch.tensor(axes, dtype=torch.int64)
    node = Node(op, [Value("x"), Value("axes", const=ax)], [Value("y")], {"keepdims": keepdims}, name=op)
    layer, why = kt.try_compile_layer(node, CPU, opset=opset, on_cpu=True)
    assert layer is not None, why
    got = layer(ctx(opset), [x, ax], node.attrs)
    assert not layer.fallbacks, layer.fallbacks
    names = ["i0", "i1"]
    ref_node = helper.make_node(op, names, ["y"], keepdims=keepdims)
    g = helper.make_graph([ref_node], "g", [helper.make_tensor_value_info("i0", TensorProto.DOUBLE, None),
                                            helper.make_tensor_value_info("i1", TensorProto.INT64, None)],
                          [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    ref = ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])).run(
        None, {"i0": x.double().numpy(), "i1": ax.numpy()})[0]
    assert tuple(got.shape) == ref.shape and got.dtype == dtype
    assert rel_err(got, torch.from_numpy(np.asarray(ref))) <= TOL[dtype] * 2


def test_reduction_not_trailing_falls_back():
    ax = torch.tensor([0])
    node = Node("ReduceMean", [Value("x"), Value("axes", const=ax)], [Value("y")], {}, name="m")
    layer = kt.compile_layer(node, CPU, opset=18, on_cpu=True)
    x = torch.randn(3, 4)
    torch.testing.assert_close(layer(ctx(18), [x, ax], {}), x.mean(0, keepdim=True))
    assert layer.fallbacks


@pytest.mark.parametrize("path", ["library+pass", "gemm"])
def test_scale_and_cast_steps(path):
    """``scale:S`` and ``cast:T`` (beyond fused.py's vocabulary): checked against torch directly."""
    from kiln.backends.triton.layers import EpilogueLayer, GemmLayer
    gen = torch.Generator().manual_seed(12)
    x, w, b = rand((2, 9, 32), torch.float16, gen), rand((24, 32), torch.float16, gen) * 0.2, \
        rand((24,), torch.float16, gen)
    node = Node("Linear", [Value("x"), Value("w"), Value("b")], [Value("y")],
                {"epilogue": ["relu", "scale:0.125", "cast:1"]}, name="fc", domain="kiln")
    layer = EpilogueLayer(node, None) if path != "gemm" else GemmLayer(node, None)
    got = layer(ctx(), [x, w, b], node.attrs)
    ref = torch.relu(torch.nn.functional.linear(x.double(), w.double(), b.double())) * 0.125
    assert got.dtype == torch.float32 and rel_err(got, ref) <= 2e-3


def test_output_follows_a_dense_layout():
    """Like torch, a channels-last (or transposed) operand gives an output in its layout, read and written flat."""
    gen = torch.Generator().manual_seed(13)
    x = rand((2, 8, 5, 5), torch.float32, gen).contiguous(memory_format=torch.channels_last)
    r = rand((2, 8, 5, 5), torch.float32, gen).contiguous(memory_format=torch.channels_last)
    bias = rand((8, 1, 1), torch.float32, gen)
    layer = check_region(["Add(i0,i1)", "Add(t0,i2)", "Relu(t1)"], [x, bias, r])
    got = layer(ctx(), [x, bias, r], {})
    assert got.is_contiguous(memory_format=torch.channels_last)
    spec = layer.launch.last_spec
    assert spec.out_layout == "flat" and spec.layouts[0] == "flat" and spec.layouts[2] == "flat"


# -- whether generated kernels are offered on the CPU: an explicit option, never the environment --------------
def test_cpu_tensors_get_generated_kernels_only_when_asked():
    node = Node("Softmax", [Value("x")], [Value("y")], {"axis": -1}, name="sm")
    ok, why = kt.available(CPU)
    assert not ok and "triton_on_cpu" in why
    assert kt.compile_layer(node, CPU) is None  # Triton interprets in this process, but nobody asked
    assert kt.compile_layer(node, CPU, on_cpu=True) is not None


def test_asking_where_triton_does_not_interpret_is_an_error(monkeypatch):
    import kiln
    from kiln.errors import KilnError
    from kiln.tactics import DEFAULT, Choice
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # Triton's own switch off, as in a process started without it
    node = Node("Softmax", [Value("x")], [Value("y")], {"axis": -1}, name="sm")
    with pytest.raises(KilnError, match="TRITON_INTERPRET=1"):
        kt.available(CPU, on_cpu=True)
    with pytest.raises(KilnError, match="TRITON_INTERPRET=1"):
        DEFAULT.with_triton_on_cpu().make(Choice("triton"), node, {}, CPU)
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(KilnError, match="TRITON_INTERPRET=1"):
        kiln.build(model, device="cpu", tactics=DEFAULT.with_triton_on_cpu())
    assert kiln.build(model, device="cpu").num_layers == 1  # without the option nothing asks for Triton
