"""The ``aten`` CPU convolution candidate (torch's NCHW convolution, the output in the layer's own layout,
kiln/tactics/space.py ``_aten``) against a float64 convolution, NaN/Inf included, and where it is offered."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kiln.ops import KernelContext
from kiln.ops.fused import apply_epilogue
from kiln.tactics import space

CTX = KernelContext(opset=21, device=torch.device("cpu"))
ATEN = space.Choice("aten", {"layout": "nchw"})


def _node(inputs: list, attrs: dict):
    return SimpleNamespace(op_type="Conv", domain="kiln", attrs=attrs, meta={},
                           inputs=[None if t is None else SimpleNamespace(id=i) for i, t in enumerate(inputs)])


# cout, cin per group, kernel, strides, pads, group, epilogue
CASES = [
    (8, 8, 1, [1, 1], [0, 0, 0, 0], 1, []),
    (16, 8, 1, [1, 1], [0, 0, 0, 0], 1, ["hardswish"]),
    (12, 1, 5, [1, 1], [2, 2, 2, 2], 12, ["relu"]),         # depthwise 5x5
    (12, 1, 3, [2, 1], [1, 1, 1, 1], 12, ["hardswish"]),    # depthwise, stride (2, 1) as in text recognizers
    (8, 4, 3, [2, 2], [1, 0, 1, 2], 1, ["add:3", "relu"]),  # asymmetric pads, a residual add
]


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[2]}g{c[5]}s{c[3][0]}{c[3][1]}-{'+'.join(c[6]) or 'none'}")
def test_aten_candidate_matches_float64(case, channels_last):
    cout, cin_g, k, strides, pads, group, epilogue = case
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, cin_g * group, 9, 13, generator=g).contiguous(memory_format=fmt)
    x[0, 0, 4, 6], x[1, -1, 0, 0] = float("nan"), float("inf")
    w = torch.randn(cout, cin_g, k, k, generator=g) * 0.3
    b = torch.randn(cout, generator=g)
    attrs = {"strides": strides, "pads": pads, "dilations": [1, 1], "group": group, "epilogue": list(epilogue),
             "channels_last": int(channels_last)}
    xp = F.pad(x.double(), (pads[1], pads[3], pads[0], pads[2]))
    y64 = F.conv2d(xp, w.double(), b.double(), strides, 0, 1, group)
    extra = [torch.randn(y64.shape, generator=g).contiguous(memory_format=fmt)
             for s in epilogue if s.startswith("add:")]
    inputs = [x, w, b] + extra
    want = apply_epilogue(y64, epilogue, [None, None, None] + [t.double() for t in extra])
    tactic = space.make(ATEN, _node(inputs, attrs), dict(enumerate(inputs)), torch.device("cpu"))
    assert tactic.name == ATEN.label == "aten/layout=nchw"
    with torch.inference_mode():
        got = tactic.kernel(CTX, inputs, attrs)
    assert got.shape == want.shape
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.equal(torch.isinf(got), torch.isinf(want))
    finite = torch.isfinite(want)
    assert torch.allclose(got.double()[finite], want[finite], rtol=1e-4, atol=1e-4)
    # the next layer sees the layout it was tuned with
    assert got.is_contiguous(memory_format=fmt)


def test_aten_candidate_is_offered_on_the_cpu_only():
    node = _node([None, None], {"epilogue": []})
    cpu = [c.label for c in space.candidates(node, torch.device("cpu"), level=3)]
    assert ATEN.label in cpu
    assert ATEN.label not in [c.label for c in space.candidates(node, torch.device("cpu"), level=1)]
    assert "aten" not in [c.name for c in space.candidates(node, torch.device("cuda"), level=3)]
    w = torch.randn(4, 4, 1, 1)
    with pytest.raises(space.NotApplicable):
        space.make(ATEN, _node([None, w], {"epilogue": []}), {1: w}, torch.device("cuda"))


@pytest.mark.parametrize("params", [{}, {"layout": "nhwc"}])
def test_aten_takes_only_its_own_layout(params):
    """A replay file or an edited engine naming another layout gets the device's default, not channels-last
    oneDNN under the aten name."""
    w = torch.randn(4, 4, 1, 1)
    with pytest.raises(space.NotApplicable):
        space.make(space.Choice("aten", params), _node([None, w], {"epilogue": []}), {1: w}, torch.device("cpu"))
