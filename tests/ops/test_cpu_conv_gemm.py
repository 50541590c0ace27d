"""The onednn_gemm CPU tactic (1x1 convolutions as a oneDNN matmul, kiln/ops/fused_cpu.py) against the layer's
own kernel (kiln/ops/fused.py) and a float64 convolution: one row per case, batch 1 and 3, NCHW and NHWC."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kiln.ops import KernelContext, fused_cpu
from kiln.ops.fused import apply_epilogue, fused_conv
from kiln.tactics import space

pytestmark = pytest.mark.skipif(not fused_cpu._available(), reason="this torch has no oneDNN ops")

CTX = KernelContext(opset=21, device=torch.device("cpu"))


def _node(inputs: list, attrs: dict):
    """A stand-in kiln::Conv whose input i is value id i (None where the input is absent)."""
    return SimpleNamespace(op_type="Conv", domain="kiln", attrs=attrs, meta={},
                           inputs=[None if t is None else SimpleNamespace(id=i) for i, t in enumerate(inputs)])


# cin, cout, strides, bias, epilogue
CASES = [
    (16, 32, [1, 1], True, []),
    (16, 32, [1, 1], True, ["relu"]),
    (16, 32, [1, 1], False, ["relu"]),
    (16, 32, [1, 1], True, ["add:3"]),
    (16, 32, [1, 1], True, ["add:3", "relu"]),
    (16, 32, [2, 2], True, ["add:3", "relu"]),  # a ResNet downsample, odd sizes (ceil division)
    (16, 32, [2, 1], True, ["relu"]),
    (16, 32, [1, 1], True, ["gelu"]),
    (16, 32, [1, 1], True, ["relu", "add:3"]),
    (16, 32, [1, 1], True, ["add:3", "relu", "mul:4"]),
]


def _case(case, batch, channels_last, g):
    cin, cout, strides, bias, epilogue = case
    x = torch.randn(batch, cin, 11, 9, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 1, 1, generator=g) * 0.3
    b = torch.randn(cout, generator=g) if bias else None
    attrs = {"strides": strides, "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1,
             "epilogue": list(epilogue), "channels_last": int(channels_last)}
    out_shape = (batch, cout, -(-11 // strides[0]), -(-9 // strides[1]))
    extra = [torch.randn(out_shape, generator=g).contiguous(memory_format=torch.channels_last if channels_last
                                                           else torch.contiguous_format)
             for s in epilogue if s.startswith(("add:", "mul:"))]
    return [x, w, b] + extra, attrs


def _float64(inputs, attrs):
    x, w, b = (None if t is None else t.double() for t in inputs[:3])
    y = F.conv2d(x, w, b, stride=attrs["strides"])
    return apply_epilogue(y, attrs["epilogue"], [None, None, None] + [t.double() for t in inputs[3:]])


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"s{c[2][0]}{c[2][1]}{'b' if c[3] else ''}-"
                                                    f"{'+'.join(c[4]) or 'none'}")
def test_gemm_tactic_matches_conv(case, batch, channels_last):
    g = torch.Generator().manual_seed(0)
    inputs, attrs = _case(case, batch, channels_last, g)
    node = _node(inputs, attrs)
    tactic = space.make(space.Choice("onednn_gemm"), node, dict(enumerate(inputs)), torch.device("cpu"))
    with torch.inference_mode():
        want = fused_conv(CTX, [t.clone() if t is not None else None for t in inputs], attrs)
        got = tactic.kernel(CTX, [t.clone() if t is not None else None for t in inputs], attrs)
        again = tactic.kernel(CTX, inputs, attrs)  # the reordered weight is reused on the second call
    exact = _float64(inputs, attrs)
    assert got.shape == want.shape
    for y in (got, again):
        assert torch.allclose(y.double(), exact, rtol=1e-4, atol=1e-4)
        assert torch.allclose(y, want, rtol=1e-4, atol=1e-4)
    if channels_last:  # the next layer sees the layout it was tuned with
        assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("why,w_shape,attrs", [
    ("3x3 kernel", (8, 4, 3, 3), {}),
    ("padded", (8, 4, 1, 1), {"pads": [1, 1, 1, 1]}),
    ("grouped", (8, 2, 1, 1), {"group": 2}),
    ("float16", (8, 4, 1, 1), {"dtype": torch.float16}),
])
def test_gemm_tactic_declines(why, w_shape, attrs):
    w = torch.randn(w_shape, dtype=attrs.pop("dtype", torch.float32))
    attrs = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1, "epilogue": [], **attrs}
    node = _node([None, w], attrs)
    assert fused_cpu.conv1x1_gemm_tactic(node, {1: w}) is None, why
    with pytest.raises(space.NotApplicable):
        space.make(space.Choice("onednn_gemm"), node, {1: w}, torch.device("cpu"))


def test_gemm_tactic_is_a_cpu_candidate():
    node = _node([None, None], {"epilogue": []})
    cpu = [c.name for c in space.candidates(node, torch.device("cpu"), level=3)]
    assert "onednn_gemm" in cpu and cpu[0] == "torch"
    assert "onednn_gemm" not in [c.name for c in space.candidates(node, torch.device("cuda"), level=3)]


@pytest.mark.parametrize("w_shape,strides,epilogue,want", [
    ((8, 4, 1, 1), [1, 1], ["relu"], "onednn_gemm"),
    ((8, 4, 1, 1), [1, 1], [], "onednn_gemm"),
    ((8, 4, 1, 1), [1, 1], ["add:3", "relu"], "onednn"),  # the convolution's fused add+ReLU is faster
    ((8, 4, 1, 1), [2, 2], ["relu"], "onednn"),
    ((8, 4, 3, 3), [1, 1], ["relu"], "onednn"),
])
def test_default_choice_for_1x1(w_shape, strides, epilogue, want):
    w = torch.randn(w_shape)
    attrs = {"strides": strides, "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1, "epilogue": epilogue}
    node = SimpleNamespace(op_type="Conv", domain="kiln", attrs=attrs, meta={},
                           inputs=[SimpleNamespace(id=0, const=None), SimpleNamespace(id=1, const=w)])
    assert space.default_choice(node, torch.device("cpu")).name == want
    assert space.default_choice(node, torch.device("cuda")).name == "torch"
