"""Small CPU 1-D convolutions run as one matrix product (kiln/ops/conv.py ``small_conv1d``): same results as
torch's convolution and onnx.reference, NaN/Inf included, and the rule takes only the sizes it was measured on."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.ops.conv import conv1d_as_matmul, small_conv1d

CASES = [  # x shape, w shape, stride, pads (begin, end), bias
    ((1, 1, 640), (258, 1, 256), 128, (0, 0), False),
    ((1, 129, 4), (128, 129, 3), 1, (1, 1), True),
    ((2, 128, 4), (64, 128, 3), 2, (1, 0), True),
    ((1, 64, 7), (32, 64, 5), 3, (2, 2), True),
]


@pytest.mark.parametrize("xs,ws,stride,pads,bias", CASES)
def test_matches_torch_convolution(xs, ws, stride, pads, bias):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(xs, generator=g), torch.randn(ws, generator=g)
    b = torch.randn(ws[0], generator=g) if bias else None
    x[0, 0, 1] = float("nan")
    x[-1, -1, -1] = float("inf")
    assert small_conv1d(x, w, [stride], [1], list(pads), 1)
    want = F.conv1d(F.pad(x, pads), w, b, stride=stride)
    got = conv1d_as_matmul(x, w, b, stride, *pads)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, equal_nan=True)
    assert torch.equal(torch.isnan(got), torch.isnan(want))


def test_rule_is_narrow():
    x, w = torch.randn(1, 64, 2), torch.randn(64, 64, 3)
    assert not small_conv1d(x, w, [1], [1], [1, 1], 1)  # reduction 192: torch's own is as fast
    assert not small_conv1d(torch.randn(1, 128, 64), torch.randn(64, 128, 3), [1], [1], [1, 1], 1)  # 64 rows
    assert not small_conv1d(torch.randn(1, 128, 4), torch.randn(64, 32, 3), [1], [1], [1, 1], 4)  # groups
    assert not small_conv1d(torch.randn(1, 128, 4).double(), torch.randn(64, 128, 3).double(), [1], [1], [1, 1], 1)
    assert not small_conv1d(torch.randn(1, 128, 4, 4), torch.randn(64, 128, 3, 3), [1, 1], [1, 1], [1, 1, 1, 1], 1)


def test_onnx_conv_in_an_engine_matches_the_reference():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((128, 129, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 129, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 129, 4)).astype(np.float32)
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    for level in (0, 3):  # the op's own kernel (as in an If body), and the optimized layer
        got = kiln.build(m, optimization_level=level).create_execution_context().infer({"x": x})["y"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
