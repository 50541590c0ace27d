"""Each pass on a small graph: the rewrite happens (layer ops/counts) and the engine still matches
onnx.reference on random inputs."""
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import kiln

rng = np.random.default_rng(0)
F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, F, None) for n in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def const(name, arr):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr), name))


def check(m, feeds, rtol=1e-4, atol=1e-5, **config):
    engine = kiln.build(m, **config)
    ref = ReferenceEvaluator(m).run(None, feeds)
    got = engine.create_execution_context().infer(feeds)
    for o, r in zip(m.graph.output, ref):
        np.testing.assert_allclose(got[o.name], r, rtol=rtol, atol=atol)
    return engine


def ops(engine):
    return [l.op for l in engine.report.layers]


def w(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_constant_folding_of_shape_chain():
    # Reshape(x, Concat(Shape(x)[0], -1)) with a static shape folds the whole shape computation.
    nodes = [helper.make_node("Shape", ["x"], ["s"]), const("i0", np.array(0)),
             helper.make_node("Gather", ["s", "i0"], ["b"]), const("ax", np.array([0])),
             helper.make_node("Unsqueeze", ["b", "ax"], ["bu"]), const("m1", np.array([-1])),
             helper.make_node("Concat", ["bu", "m1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    m = model(nodes, [("x", [2, 3, 4])], ["y"])
    e = check(m, {"x": w(2, 3, 4)})
    assert ops(e) == ["Reshape"]
    assert e.report.fusions["fold_constants"] >= 4


def test_shape_chain_on_dynamic_dim_is_not_folded():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])]
    m = model(nodes, [("x", ["batch", 3])], ["y"])
    e = kiln.build(m)
    # The batch is not folded into a number: the target becomes [-1, 3] (or Shape stays a layer).
    assert "Shape" in ops(e) or e.report.fusions.get("constant_reshape_target") == 1
    for b in (5, 7):
        x = w(b, 3)
        np.testing.assert_array_equal(e.create_execution_context().infer({"x": x})["y"], x)


def test_noops_and_dead_code_removed():
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Dropout", ["a"], ["b"]),
             helper.make_node("Cast", ["b"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("Relu", ["c"], ["y"]), helper.make_node("Exp", ["x"], ["unused"])]
    e = check(model(nodes, [("x", [4, 4])], ["y"]), {"x": w(4, 4)})
    assert ops(e) == ["Relu"]


def test_common_subexpressions_merged():
    nodes = [helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Exp", ["x"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    e = check(model(nodes, [("x", [4])], ["y"]), {"x": w(4)})
    assert ops(e).count("Exp") + sum("Exp" in l.kernel for l in e.report.layers) >= 1
    assert len(e.report.layers) <= 2


def test_conv_batchnorm_relu_add_is_one_layer():
    c = 8
    bn = [("s", w(c) ** 2 + 0.5), ("bb", w(c)), ("mu", w(c)), ("var", w(c) ** 2 + 0.1)]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["n"], epsilon=1e-3),
             helper.make_node("Add", ["n", "x"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    m = model(nodes, [("x", [2, c, 6, 6])], ["y"], [("W", w(c, c, 3, 3)), ("B", w(c))] + bn)
    e = check(m, {"x": w(2, c, 6, 6)})
    assert ops(e) == ["kiln::Conv"]
    layer = e.report.layers[0]
    assert set(layer.covers) == {n.name or "" for n in m.graph.node} or len(layer.covers) == 4
    assert "residual" in layer.kernel and "relu" in layer.kernel


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad_resolved(auto_pad):
    m = model([helper.make_node("Conv", ["x", "W"], ["y"], auto_pad=auto_pad, strides=[2, 2])],
              [("x", [1, 3, 7, 7])], ["y"], [("W", w(4, 3, 3, 3))])
    e = check(m, {"x": w(1, 3, 7, 7)})
    assert ops(e) == ["kiln::Conv"]


def test_matmul_bias_gelu_becomes_linear():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Div", ["a", "sq2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["a", "e1"], ["g"]),
             helper.make_node("Mul", ["g", "half"], ["y"])]
    inits = [("W", w(16, 32)), ("b", w(32)), ("sq2", np.float32(math.sqrt(2))), ("one", np.float32(1.0)),
             ("half", np.float32(0.5))]
    e = check(model(nodes, [("x", [2, 5, 16])], ["y"], inits), {"x": w(2, 5, 16)})
    assert ops(e) == ["kiln::Linear"]
    assert e.report.layers[0].kernel == "torch.linear+bias+gelu"


def test_gemm_with_alpha_beta():
    m = model([helper.make_node("Gemm", ["x", "W", "C"], ["y"], alpha=0.5, beta=2.0, transB=1)],
              [("x", [3, 8])], ["y"], [("W", w(4, 8)), ("C", w(4))])
    e = check(m, {"x": w(3, 8)})
    assert ops(e) == ["kiln::Linear"]


def test_layer_norm_recognized():
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]), helper.make_node("Sub", ["x", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "g"], ["ng"]),
             helper.make_node("Add", ["ng", "b"], ["y"])]
    inits = [("two", np.float32(2)), ("eps", np.float32(1e-5)), ("g", w(16)), ("b", w(16))]
    e = check(model(nodes, [("x", [2, 3, 16])], ["y"], inits), {"x": w(2, 3, 16)})
    assert ops(e) == ["LayerNormalization"]
    assert len(e.report.layers[0].covers) == 9


def test_rms_norm_recognized():
    nodes = [helper.make_node("Pow", ["x", "two"], ["x2"]), helper.make_node("ReduceMean", ["x2"], ["ms"], axes=[-1]),
             helper.make_node("Add", ["ms", "eps"], ["me"]), helper.make_node("Sqrt", ["me"], ["r"]),
             helper.make_node("Reciprocal", ["r"], ["ir"]), helper.make_node("Mul", ["x", "ir"], ["n"]),
             helper.make_node("Mul", ["n", "g"], ["y"])]
    inits = [("two", np.float32(2)), ("eps", np.float32(1e-6)), ("g", w(16))]
    e = check(model(nodes, [("x", [2, 3, 16])], ["y"], inits), {"x": w(2, 3, 16)})
    assert ops(e) == ["RMSNormalization"]


def test_silu_and_tanh_gelu_recognized():
    k = math.sqrt(2 / math.pi)
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["a"]),
             helper.make_node("Pow", ["a", "three"], ["a3"]), helper.make_node("Mul", ["a3", "c"], ["a3c"]),
             helper.make_node("Add", ["a", "a3c"], ["inner"]), helper.make_node("Mul", ["inner", "k"], ["ik"]),
             helper.make_node("Tanh", ["ik"], ["t"]), helper.make_node("Add", ["t", "one"], ["t1"]),
             helper.make_node("Mul", ["a", "t1"], ["g"]), helper.make_node("Mul", ["g", "half"], ["y"])]
    inits = [("three", np.float32(3)), ("c", np.float32(0.044715)), ("k", np.float32(k)), ("one", np.float32(1)),
             ("half", np.float32(0.5))]
    e = check(model(nodes, [("x", [4, 8])], ["y"], inits), {"x": w(4, 8)})
    assert ops(e) in (["Swish", "Gelu"], ["kiln::Elementwise"])
    assert e.report.fusions.get("recognize_silu") == 1 and e.report.fusions.get("recognize_gelu") == 1


def test_attention_recognized():
    b, h, s, d = 2, 4, 8, 16
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]), helper.make_node("Div", ["qk", "scale"], ["sc"]),
             helper.make_node("Add", ["sc", "mask"], ["sm_in"]), helper.make_node("Softmax", ["sm_in"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    inits = [("scale", np.float32(math.sqrt(d)))]
    m = model(nodes, [("q", [b, h, s, d]), ("k", [b, h, s, d]), ("v", [b, h, s, d]), ("mask", [b, 1, 1, s])],
              ["y"], inits)
    mask = np.where(rng.random((b, 1, 1, s)) < 0.2, -1e4, 0).astype(np.float32)
    e = check(m, {"q": w(b, h, s, d), "k": w(b, h, s, d), "v": w(b, h, s, d), "mask": mask})
    assert "kiln::Attention" in ops(e)
    assert len(e.report.layers) <= 2


def test_qkv_projections_merged_horizontally():
    nodes = [helper.make_node("MatMul", ["x", f"W{i}"], [f"m{i}"]) for i in range(3)]
    nodes += [helper.make_node("Add", [f"m{i}", f"b{i}"], [f"y{i}"]) for i in range(3)]
    inits = [(f"W{i}", w(16, 16)) for i in range(3)] + [(f"b{i}", w(16)) for i in range(3)]
    e = check(model(nodes, [("x", [2, 4, 16])], ["y0", "y1", "y2"], inits), {"x": w(2, 4, 16)})
    assert ops(e) == ["kiln::Linear", "Split"]
    assert e.report.fusions["fuse_horizontal:Linear"] == 3


def test_inception_branches_merged_horizontally():
    nodes = [helper.make_node("Conv", ["x", f"W{i}", f"B{i}"], [f"c{i}"]) for i in range(3)]
    nodes += [helper.make_node("Relu", [f"c{i}"], [f"r{i}"]) for i in range(3)]
    nodes += [helper.make_node("Concat", ["r0", "r1", "r2"], ["y"], axis=1)]
    inits = [(f"W{i}", w(4 + i, 8, 1, 1)) for i in range(3)] + [(f"B{i}", w(4 + i)) for i in range(3)]
    e = check(model(nodes, [("x", [1, 8, 5, 5])], ["y"], inits), {"x": w(1, 8, 5, 5)})
    assert ops(e)[:2] == ["kiln::Conv", "Split"]


def test_elementwise_chain_is_one_region():
    nodes = [helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Mul", ["a", "x"], ["b"]),
             helper.make_node("Sqrt", ["b"], ["c"]), helper.make_node("Neg", ["c"], ["y"])]
    e = check(model(nodes, [("x", [3, 4])], ["y"]), {"x": np.abs(w(3, 4))})
    assert ops(e) == ["kiln::Elementwise"]
    assert len(e.report.layers[0].covers) == 4


def test_rejections_are_reported():
    # Conv output read twice: the Relu cannot be fused, and the report says why not.
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "c"], ["y"])]
    e = check(model(nodes, [("x", [1, 2, 4, 4])], ["y"], [("W", w(2, 2, 1, 1))]), {"x": w(1, 2, 4, 4)})
    assert len(e.report.layers) >= 2
    assert all({"rule", "nodes", "reason"} <= set(r) for r in e.report.rejections)


def test_optimization_level_zero_keeps_graph():
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    e = check(model(nodes, [("x", [4])], ["y"]), {"x": w(4)}, optimization_level=0)
    assert ops(e) == ["Identity", "Relu"]


def test_channels_last_layout_marks_convs():
    m = model([helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
              [("x", [1, 3, 6, 6])], ["y"], [("W", w(4, 3, 3, 3))])
    e = check(m, {"x": w(1, 3, 6, 6)}, channels_last=True)
    assert "[nhwc]" in e.report.layers[0].kernel


@pytest.mark.parametrize("flag,dtype", [("fp16", np.float16), ("bf16", None)])
def test_reduced_precision_keeps_float32_io(flag, dtype):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    m = model(nodes, [("x", [4, 16])], ["y"], [("W", w(16, 8)), ("b", w(8))])
    x = w(4, 16)
    e = kiln.build(m, **{flag: True})
    out = e.create_execution_context().infer({"x": x})["y"]
    ref = ReferenceEvaluator(m).run(None, {"x": x})[0]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=3e-2, atol=3e-2)
    precisions = {l.precision for l in e.report.layers if l.op == "kiln::Linear"}
    assert precisions == {"f16" if flag == "fp16" else "bf16"}


def test_several_readers_rejection_names_the_readers():
    # Conv output read by the Relu and the Add: neither can be absorbed, and the report says why.
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "c"], ["y"])]
    e = check(model(nodes, [("x", [1, 2, 4, 4])], ["y"], [("W", w(2, 2, 1, 1))]), {"x": w(1, 2, 4, 4)})
    reasons = [r["reason"] for r in e.report.rejections if r["rule"] == "fuse_epilogues"]
    assert any("'c' has 2 readers" in r and "read once" in r for r in reasons), reasons


def test_elementwise_chain_with_a_shared_intermediate_says_why():
    nodes = [helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Sqrt", ["a"], ["b"]),
             helper.make_node("Neg", ["a"], ["c"]), helper.make_node("Mul", ["b", "c"], ["y"])]
    e = check(model(nodes, [("x", [3, 4])], ["y"]), {"x": np.abs(w(3, 4))})
    reasons = [r["reason"] for r in e.report.rejections if r["rule"] == "fuse_elementwise"]
    assert any("'a' has 2 readers" in r for r in reasons), e.report.rejections


def _region_ops(engine) -> list[str]:
    return [op for l in engine.report.layers if l.kernel.startswith("elementwise[")
            for op in l.kernel[len("elementwise["):-1].split("+")]


def _cast(src, dst, to=TensorProto.FLOAT):
    return helper.make_node("Cast", [src], [dst], to=to)


# Ops fused since fusion asks the registry (elementwise) and the Triton generator (can_emit) instead of a list
# of its own: each in a chain whose region must hold it, with outputs equal to onnx.reference's.
_NEWLY_FUSED = {
    **{op: [helper.make_node("Neg", ["x"], ["a"]), helper.make_node(op, ["a"], ["b"]),
            helper.make_node("Neg", ["b"], ["y"])]
       for op in ("Celu", "Mish", "Round", "Selu", "Sign", "Softsign", "ThresholdedRelu")},
    **{op: [helper.make_node("Neg", ["x"], ["a"]), helper.make_node(op, ["a", "x"], ["b"]),
            helper.make_node("Exp", ["b"], ["y"])] for op in ("Sum", "Mean")},
    **{op: [helper.make_node("Log", ["x"], ["a"]), helper.make_node(op, ["a"], ["b"]),
            helper.make_node("Not", ["b"], ["c"]), _cast("c", "y")] for op in ("IsNaN", "IsInf")},
    **{op: [helper.make_node("Neg", ["x"], ["a"]), helper.make_node(op, ["a", "x"], ["b"]), _cast("b", "y")]
       for op in ("LessOrEqual", "GreaterOrEqual")},
    "Xor": [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Less", ["a", "x"], ["b"]),
            helper.make_node("Xor", ["b", "b"], ["c"]), helper.make_node("Not", ["c"], ["d"]), _cast("d", "y")],
}


def test_cast_to_float32_before_a_matmul_builds_in_fp16():
    """A Cast(to=float32) between elementwise ops and a MatMul (jax2tf exports write them) stays outside any
    region, so the precision pass retargets it to float16: fused, it once handed float32 to a float16 GEMM."""
    nodes = [helper.make_node("Neg", ["x"], ["a"]), _cast("a", "b"), helper.make_node("Abs", ["b"], ["c"]),
             helper.make_node("MatMul", ["c", "W"], ["y"])]
    e = check(model(nodes, [("x", [3, 4])], ["y"], [("W", w(4, 5))]), {"x": w(3, 4)})
    x = w(3, 4)
    got = kiln.build(model(nodes, [("x", [3, 4])], ["y"], [("W", w(4, 5))]), fp16=True)
    got.create_execution_context().infer({"x": x})
    assert "Cast" not in _region_ops(e)


@pytest.mark.parametrize("op", sorted(_NEWLY_FUSED))
def test_newly_fused_elementwise_ops_match_reference(op):
    x = w(3, 4) * 3
    x[0, :3] = [0.0, -1.0, 0.5]  # Log: -inf, NaN; Round: a half
    e = check(model(_NEWLY_FUSED[op], [("x", [3, 4])], ["y"], opset=18), {"x": x})  # Mish: opset 18
    assert op in _region_ops(e), e.report.layers


def _tanh_gelu_cube_first(x: str, y: str) -> tuple[list, list]:
    """Keras/TF's export of tanh-GELU: ((0.044715 * x) * x) * x, then 0.5 * (1 + tanh(..)) * x."""
    k = math.sqrt(2 / math.pi)
    nodes = [helper.make_node("Mul", ["c", x], ["cx"]), helper.make_node("Mul", [x, "cx"], ["cx2"]),
             helper.make_node("Mul", [x, "cx2"], ["cx3"]), helper.make_node("Add", [x, "cx3"], ["inner"]),
             helper.make_node("Mul", ["k", "inner"], ["ik"]), helper.make_node("Tanh", ["ik"], ["t"]),
             helper.make_node("Add", ["one", "t"], ["t1"]), helper.make_node("Mul", ["half", "t1"], ["h"]),
             helper.make_node("Mul", [x, "h"], [y])]
    inits = [("c", np.float32(0.044715)), ("k", np.float32(k)), ("one", np.float32(1)), ("half", np.float32(0.5))]
    return nodes, inits


def test_tanh_gelu_with_the_constant_multiplied_first_is_recognized():
    nodes, inits = _tanh_gelu_cube_first("x", "y")
    e = check(model(nodes, [("x", [4, 8])], ["y"], inits), {"x": 3 * w(4, 8)})
    assert e.report.fusions.get("recognize_gelu") == 1
    assert e.graph.nodes[0].op_type in ("Gelu", "Elementwise") and len(e.graph.nodes) == 1


HARDSWISH_FORMS = {
    "clip_mul_div": [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                     helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])],
    "clip_div_mul": [helper.make_node("Add", ["three", "x"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                     helper.make_node("Div", ["c", "six"], ["d"]), helper.make_node("Mul", ["d", "x"], ["y"])],
    "clip_mul_sixth": [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                       helper.make_node("Mul", ["c", "x"], ["m"]), helper.make_node("Mul", ["m", "sixth"], ["y"])],
    "hardsigmoid": [helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5),
                    helper.make_node("Mul", ["x", "h"], ["y"])],
}


@pytest.mark.parametrize("form", sorted(HARDSWISH_FORMS))
def test_hardswish_forms_fuse_into_the_convolution(form):
    conv = helper.make_node("Conv", ["img", "W", "B"], ["x"], pads=[1, 1, 1, 1])
    inits = [("W", w(8, 3, 3, 3)), ("B", w(8)), ("three", np.float32(3)), ("zero", np.float32(0)),
             ("six", np.float32(6)), ("sixth", np.float32(1 / 6))]
    img = 3 * w(1, 3, 8, 8)
    img[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]  # NaN/Inf propagate as ONNX's ops do
    e = check(model([conv] + HARDSWISH_FORMS[form], [("img", [1, 3, 8, 8])], ["y"], inits), {"img": img})
    assert e.report.fusions.get("recognize_hardswish") == 1
    assert [(n.op_type, n.attrs.get("epilogue")) for n in e.graph.nodes] == [("Conv", ["hardswish"])]


def test_hardswish_with_a_shared_intermediate_is_left_alone_and_says_why():
    nodes = HARDSWISH_FORMS["clip_mul_div"] + [helper.make_node("Add", ["c", "y"], ["z"])]
    m = model(nodes, [("x", [2, 8])], ["z"], [("three", np.float32(3)), ("zero", np.float32(0)),
                                                 ("six", np.float32(6))])
    e = check(m, {"x": 4 * w(2, 8)})
    assert not e.report.fusions.get("recognize_hardswish")
    assert any(r["rule"] == "recognize_hardswish" and "read only once" in r["reason"] for r in e.report.rejections)


@pytest.mark.parametrize("op", ["Conv", "Gemm"])
def test_constant_scale_after_a_layer_folds_into_its_weights(op):
    if op == "Conv":
        layer = helper.make_node("Conv", ["x", "W", "B"], ["l"])
        inits, shape, scale = [("W", w(6, 3, 1, 1)), ("B", w(6))], [2, 3, 5, 5], w(1, 6, 1, 1)
    else:
        layer = helper.make_node("Gemm", ["x", "W", "B"], ["l"], transB=1)
        inits, shape, scale = [("W", w(6, 3)), ("B", w(6))], [2, 3], w(6)
    nodes = [layer, helper.make_node("Mul", ["l", "s"], ["m"]), helper.make_node("Add", ["m", "d"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    e = check(model(nodes, [("x", shape)], ["y"], inits + [("s", scale), ("d", np.float32(0.25))]), {"x": w(*shape)})
    assert len(e.graph.nodes) == 1 and e.graph.nodes[0].attrs["epilogue"] == ["relu"]
    assert e.report.fusions.get("scale_weights") == 1


@pytest.mark.parametrize("op,bias", [("Conv", True), ("Conv", False), ("Gemm", True)])
def test_hardsigmoid_after_a_layer_folds_into_its_weights_and_a_clip(op, bias):
    # PaddlePaddle's squeeze-excitation gate: HardSigmoid(alpha=0.2, beta=0.5) right after a 1x1 convolution.
    ins = ["x", "W", "B"] if bias else ["x", "W"]
    if op == "Conv":
        layer = helper.make_node("Conv", ins, ["l"])
        inits, shape = [("W", w(6, 3, 1, 1))], [2, 3, 5, 5]
    else:
        layer = helper.make_node("Gemm", ins, ["l"], transB=1)
        inits, shape = [("W", w(6, 3))], [2, 3]
    inits += [("B", w(6))] if bias else []
    nodes = [layer, helper.make_node("HardSigmoid", ["l"], ["y"], alpha=0.2, beta=0.5)]
    x = 4 * w(*shape)
    x.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]  # NaN/Inf propagate as ONNX's ops do
    e = check(model(nodes, [("x", shape)], ["y"], inits), {"x": x})
    assert [n.attrs.get("epilogue") for n in e.graph.nodes] == [["clip:0.0:1.0"]]
    assert e.report.fusions.get("fold_hardsigmoid") == 1


def test_hardsigmoid_after_another_step_is_kept_as_a_step():
    layer = helper.make_node("Conv", ["x", "W", "B"], ["l"])
    nodes = [layer, helper.make_node("Relu", ["l"], ["r"]), helper.make_node("HardSigmoid", ["r"], ["y"], alpha=0.2)]
    e = check(model(nodes, [("x", [1, 3, 4, 4])], ["y"], [("W", w(6, 3, 1, 1)), ("B", w(6))]), {"x": w(1, 3, 4, 4)})
    assert [step.split(":")[0] for step in e.graph.nodes[0].attrs["epilogue"]] == ["relu", "hardsigmoid"]
    assert not e.report.fusions.get("fold_hardsigmoid")
