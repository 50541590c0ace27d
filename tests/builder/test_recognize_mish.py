"""recognize_mish: x * tanh(softplus(x)) as both exporters write it becomes one Mish layer, with the same outputs
(NaN and Inf included) as PyTorch."""
import numpy as np
import pytest
import torch

import kiln


class MishForms(torch.nn.Module):
    def forward(self, x):
        y = x * 3.0
        return y * torch.tanh(torch.nn.functional.softplus(y)), torch.nn.functional.mish(x + 1.0)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_both_exporters_forms_become_mish(exporter):
    x = torch.randn(2, 5, 7) * 10  # past the exporters' softplus threshold of 20 after the * 3
    x[0, 0, :3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    engine = kiln.build(MishForms().eval(), example_inputs=(x,), exporter=exporter)
    kernels = " ".join(layer.kernel for layer in engine.report.layers)  # e.g. elementwise[Mul+Mish]
    assert kernels.count("Mish") == 2 and "Tanh" not in kernels and "Softplus" not in kernels, kernels
    got = engine.create_execution_context().infer({"x": x.numpy()})
    for name, want in zip(engine.output_names, MishForms()(x)):
        np.testing.assert_allclose(got[name], want.numpy(), rtol=1e-5, atol=1e-5, equal_nan=True)


def test_a_shared_softplus_is_not_absorbed():
    class Shared(torch.nn.Module):
        def forward(self, x):
            s = torch.nn.functional.softplus(x)
            return x * torch.tanh(s), s
    x = torch.randn(3, 4)
    engine = kiln.build(Shared().eval(), example_inputs=(x,))
    assert "Mish" not in " ".join(layer.kernel for layer in engine.report.layers)
    assert any(r["rule"] == "recognize_mish" for r in engine.report.rejections)


def test_mish_after_a_convolution_is_its_epilogue():
    class ConvMish(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return torch.nn.functional.mish(self.conv(x))
    model = ConvMish().eval()
    x = torch.randn(2, 3, 9, 9) * 4
    x[0, 0, 0, 0] = float("nan")
    engine = kiln.build(model, example_inputs=(x,))
    assert [layer.kernel for layer in engine.report.layers] == ["torch.conv2d[nhwc]+bias+mish"]
    got = engine.create_execution_context().infer({"x": x.numpy()})
    np.testing.assert_allclose(next(iter(got.values())), model(x).detach().numpy(), rtol=1e-5, atol=1e-5,
                               equal_nan=True)
