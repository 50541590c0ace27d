"""kiln.build(module, example_inputs=...): a torch.nn.Module exported through torch.onnx.export, its inputs
named after forward's parameters, dims the profile lets vary exported dynamic; outputs match the module."""
from pathlib import Path

import pytest
import torch

import kiln
from kiln.errors import InputError, ModelFormatError


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, image):
        return self.fc(torch.relu(self.conv(image)).mean((2, 3)))


def test_build_a_module_with_a_dynamic_batch():
    torch.manual_seed(0)
    net = Net()
    profile = kiln.Profile.of(image=((1, 3, 16, 16), (2, 3, 16, 16), (4, 3, 16, 16)))
    engine = kiln.build(net, example_inputs=torch.randn(2, 3, 16, 16), profiles=[profile])
    assert [i.name for i in engine.inputs] == ["image"] and engine.inputs[0].shape[0] == "batch"
    assert net.training  # the caller's module is left as it was
    for batch in (1, 3):
        x = torch.randn(batch, 3, 16, 16)
        got = engine.create_execution_context().infer({"image": x})["output_0"]
        with torch.no_grad():
            torch.testing.assert_close(got, net.eval()(x), rtol=1e-4, atol=1e-5)
        net.train()


def test_module_errors_are_clear():
    with pytest.raises(InputError, match="needs example_inputs"):
        kiln.build(Net())
    with pytest.raises(InputError, match="profiles name input.*x.*module's inputs are image"):
        kiln.build(Net(), example_inputs=torch.randn(1, 3, 8, 8),
                   profiles=[kiln.Profile.of(x=((1, 3, 8, 8), (1, 3, 8, 8), (2, 3, 8, 8)))])
    with pytest.raises(ModelFormatError, match="torchscript exporter.*Try exporter='dynamo'"):
        kiln.build(Net(), example_inputs=torch.randn(1, 5, 8, 8))  # wrong channel count: forward fails
    with pytest.raises(kiln.BuildError, match="example_inputs is for building a torch.nn.Module"):
        kiln.build(str(Path(__file__).parents[2] / "examples" / "tiny_resnet.onnx"), example_inputs=torch.randn(1, 3, 32, 32))


def test_profile_of_one_shape_fixes_it():
    p = kiln.Profile.of(image=(1, 3, 64, 64))
    assert p.min == p.opt == p.max == {"image": (1, 3, 64, 64)}
    with pytest.raises(kiln.ShapeError, match="give a shape"):
        kiln.Profile.of(image="1x3x64x64")


def test_dynamo_exporter():
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    net = Net().eval()
    engine = kiln.build(net, example_inputs=torch.randn(2, 3, 16, 16), exporter="dynamo",
                        profiles=[kiln.Profile.of(image=((1, 3, 16, 16), (2, 3, 16, 16), (4, 3, 16, 16)))])
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(engine.create_execution_context().infer({"image": x})["output_0"], net(x),
                                   rtol=1e-4, atol=1e-5)
