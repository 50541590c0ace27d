"""CPU tactics (kiln/ops/fused_cpu.py) against the plain kernels of kiln/ops/fused.py, which are the oracle:
one row per case (shapes, groups, strides, dilations, pads, epilogue), batch 1 and 3."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.engine.program import Program
from kiln.ops import KernelContext
from kiln.ops import fused_cpu
from kiln.ops.fused import fused_conv, fused_linear

pytestmark = pytest.mark.skipif(not fused_cpu._available(), reason="this torch has no oneDNN ops")

CTX = KernelContext(opset=21, device=torch.device("cpu"))


def _node(op: str, inputs: list, attrs: dict):
    """A stand-in layer whose input i is value id i (None where the input is absent)."""
    return SimpleNamespace(op_type=op, domain="kiln", attrs=attrs,
                           inputs=[None if t is None else SimpleNamespace(id=i) for i, t in enumerate(inputs)])


def _extra(epilogue, out_shape, g):
    """Residual inputs for the ``add:I``/``mul:I`` steps (inputs 3, 4, ...)."""
    n = max([int(s.split(":")[1]) for s in epilogue if s.startswith(("add:", "mul:"))], default=2) - 2
    return [torch.randn(out_shape, generator=g) for _ in range(n)]


# cin, cout, kernel, strides, pads (begin h, w, end h, w), dilations, groups, bias, epilogue
CONV_CASES = [
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, []),
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["relu"]),
    (8, 16, 1, [1, 1], [0, 0, 0, 0], [1, 1], 1, True, ["add:3", "relu"]),
    (8, 16, 1, [2, 2], [0, 0, 0, 0], [1, 1], 1, False, ["add:3"]),
    (8, 16, 3, [2, 2], [1, 1, 1, 1], [1, 1], 1, True, ["add:3", "gelu"]),
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["gelu"]),
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["gelu_tanh"]),
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["silu"]),
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["sigmoid"]),
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["tanh"]),
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["hardswish"]),
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["leaky_relu:0.1"]),
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["clip:0.0:6.0"]),
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["clip::6.0"]),  # one-sided clip: plain step after
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["hardsigmoid:0.2:0.5"]),  # no post-op: plain step
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["elu:1.0", "add:3"]),
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["relu", "add:3"]),  # unary first, then the add
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, ["add:3", "relu", "mul:4"]),
    (8, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 2, True, ["relu"]),  # grouped
    (16, 16, 3, [1, 1], [1, 1, 1, 1], [1, 1], 16, True, ["hardswish"]),  # depthwise
    (16, 16, 5, [2, 2], [2, 2, 2, 2], [1, 1], 16, False, ["relu"]),  # depthwise, strided
    (8, 16, 3, [1, 1], [2, 2, 2, 2], [2, 2], 1, True, ["relu"]),  # dilated
    (8, 16, 3, [2, 1], [0, 1, 1, 2], [1, 1], 1, True, ["add:3", "relu"]),  # asymmetric pads and strides
    (3, 8, 7, [2, 2], [3, 3, 3, 3], [1, 1], 1, True, ["relu"]),  # a stem
    (8, 16, [1, 3], [1, 1], [0, 1, 0, 1], [1, 1], 1, True, ["relu"]),  # non-square kernel
]


def _conv_args(case, batch, g, channels_last=False):
    cin, cout, k, strides, pads, dil, groups, bias, epilogue = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(batch, cin, 11, 10, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin // groups, kh, kw, generator=g) * 0.3
    b = torch.randn(cout, generator=g) if bias else None
    attrs = {"strides": strides, "pads": pads, "dilations": dil, "group": groups, "epilogue": list(epilogue)}
    y = fused_conv(CTX, [x, w, b], dict(attrs, epilogue=[]))
    return [x, w, b] + _extra(epilogue, y.shape, g), attrs


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}x{c[1]}k{c[2]}s{c[3]}p{c[4]}d{c[5]}g{c[6]}"
                                                        f"{'b' if c[7] else ''}-{'+'.join(c[8]) or 'none'}")
def test_conv_tactic_matches_plain(case, batch):
    g = torch.Generator().manual_seed(0)
    inputs, attrs = _conv_args(case, batch, g)
    tactic = fused_cpu.conv_tactic(_node("Conv", inputs, attrs), dict(enumerate(inputs)))
    assert tactic is not None and tactic.name.startswith("onednn_conv")
    with torch.inference_mode():
        want = fused_conv(CTX, list(inputs), attrs)
        for x in (inputs[0], inputs[0].contiguous(memory_format=torch.channels_last)):
            got = tactic.kernel(CTX, [x] + list(inputs[1:]), attrs)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_conv_tactic_many_shapes():
    """Past MAX_SHAPES input shapes the dense weight is used; every shape stays correct."""
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(8, 4, 3, 3, generator=g), torch.randn(8, generator=g)
    attrs = {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1, "epilogue": ["relu"]}
    tactic = fused_cpu.conv_tactic(_node("Conv", [None, w, b], attrs), {1: w, 2: b})
    with torch.inference_mode():
        for shape in [(1, 4, 8, 8), (2, 4, 8, 8), (1, 4, 5, 7), (3, 4, 9, 6), (1, 4, 8, 8)]:
            x = torch.randn(shape, generator=g)
            torch.testing.assert_close(tactic.kernel(CTX, [x, w, b], attrs), fused_conv(CTX, [x, w, b], attrs),
                                       rtol=1e-4, atol=1e-4)


def test_conv_tactic_declines():
    g = torch.Generator().manual_seed(2)
    attrs = {"strides": [1], "pads": [0, 0], "dilations": [1], "group": 1, "epilogue": []}
    w1d = torch.randn(4, 2, 3, generator=g)
    assert fused_cpu.conv_tactic(_node("Conv", [None, w1d], attrs), {1: w1d}) is None  # 1-D
    w16 = torch.randn(4, 2, 3, 3, generator=g).half()
    attrs2d = dict(attrs, strides=[1, 1], pads=[0] * 4)
    assert fused_cpu.conv_tactic(_node("Conv", [None, w16], attrs2d), {1: w16}) is None  # fp16


# x shape, N, bias, epilogue
LINEAR_CASES = [
    ((1, 16, 32), 24, True, []),
    ((1, 16, 32), 24, True, ["gelu"]),
    ((1, 16, 32), 24, True, ["gelu_tanh"]),
    ((3, 16, 32), 24, True, ["relu"]),
    ((3, 16, 32), 24, False, ["tanh"]),
    ((3, 16, 32), 24, True, ["sigmoid"]),
    ((3, 16, 32), 24, True, ["silu"]),
    ((3, 16, 32), 24, True, ["add:3"]),
    ((1, 16, 32), 24, False, ["add:3"]),
    ((3, 16, 32), 24, True, ["add:3", "relu"]),
    ((3, 16, 32), 24, True, ["gelu", "add:3"]),
    ((4, 32), 24, True, ["hardswish"]),
    ((4, 32), 24, True, ["clip:-1.0:1.0"]),
    ((4, 32), 24, True, ["leaky_relu:0.2"]),
    ((32,), 24, True, ["relu"]),  # 1-D input: the plain path
    ((2, 3, 5, 32), 7, True, ["add:3", "mul:4"]),
]


@pytest.mark.parametrize("batch_scale", [1, 3])
@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda c: f"{list(c[0])}x{c[1]}{'b' if c[2] else ''}-"
                                                           f"{'+'.join(c[3]) or 'none'}")
def test_linear_tactic_matches_plain(case, batch_scale):
    shape, n, bias, epilogue = case
    shape = (shape[0] * batch_scale,) + tuple(shape[1:]) if len(shape) > 1 else shape
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    w = torch.randn(n, shape[-1], generator=g) * 0.3
    b = torch.randn(n, generator=g) if bias else None
    inputs = [x, w, b] + _extra(epilogue, tuple(shape[:-1]) + (n,), g)
    attrs = {"epilogue": list(epilogue)}
    tactic = fused_cpu.linear_tactic(_node("Linear", inputs, attrs), dict(enumerate(inputs)))
    assert tactic is not None and tactic.name.startswith("onednn_linear")
    with torch.inference_mode():
        want = fused_linear(CTX, list(inputs), attrs)
        for _ in range(2):  # first call reorders the weight, the second uses the cached one
            got = tactic.kernel(CTX, list(inputs), attrs)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_split_epilogue():
    def split(steps):  # the remaining steps are records: compared as their text
        add, unary, rest = fused_cpu.split_epilogue(steps)
        return add, unary, [s.to_json() for s in rest]

    # relu and clip stay plain steps: oneDNN's post-ops turn NaN into 0
    assert split(["add:3", "relu"]) == (3, None, ["relu"])
    assert split(["add:3", "gelu"]) == (3, None, ["gelu"])
    assert split(["relu", "add:3"]) == (None, None, ["relu", "add:3"])
    assert split(["clip:0.0:6.0"]) == (None, None, ["clip:0.0:6.0"])
    assert split(["sigmoid", "add:3"]) == (None, ("sigmoid", [], ""), ["add:3"])
    assert split(["elu:1.0"]) == (None, None, ["elu:1.0"])
    assert split([]) == (None, None, [])


def _small_convnet():
    rng = np.random.default_rng(0)
    F = TensorProto.FLOAT
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
             "b1": rng.standard_normal(8).astype(np.float32),
             "w2": rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3,
             "w3": rng.standard_normal((8, 5)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Add", ["c2", "r1"], ["s"]),
             helper.make_node("Relu", ["s"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w3"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["n", 3, 9, 9])],
                          [helper.make_tensor_value_info("y", F, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_engine_uses_tactics_and_matches_plain_program():
    engine = kiln.build(_small_convnet(), device="cpu")
    assert engine.tactics and all(t.startswith("onednn_") for t in engine.tactics.values())
    assert any(t == "onednn_conv[add; then relu]" for t in engine.tactics.values())
    plain = Program(engine.graph, engine.device, engine.registry, engine._constants)
    ctx = engine.create_execution_context()
    x_id = engine.graph.inputs[0].id
    for batch in (1, 3):
        x = torch.randn(batch, 3, 9, 9)
        got = ctx.infer({"x": x})["y"]
        with torch.inference_mode():
            want = plain.run({x_id: x})[0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The file keeps the plain weights: a reloaded engine chooses its tactics again.
    again = kiln.Engine.deserialize(engine.serialize())
    assert again.tactics == engine.tactics
