"""bf16 engines on CPUs with native bf16 get oneDNN's reordered-weight convolution and matmul, as float32 ones
do, with bf16-level agreement to the float32 model (NaN propagating)."""
import numpy as np
import pytest
import torch

import kiln
from kiln.ops import fused_cpu

pytestmark = pytest.mark.skipif(not fused_cpu._available() or not fused_cpu._native_bf16(),
                                reason="no oneDNN bf16 on this CPU")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = torch.nn.Conv2d(16, 32, 1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y) + y)
        y = self.c3(y).mean((2, 3))
        return self.fc(y)


def test_bf16_convolutions_take_the_onednn_tactic():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 12, 12)
    # level 1: each layer's default tactic, not the tuner's timing (oneDNN is the CPU default for Conv/Linear)
    engine = kiln.build(model, example_inputs=(x,), bf16=True, accuracy_target=None, optimization_level=1)
    onednn = [name for name in engine.tactics.values() if name.startswith("onednn")]
    assert len(onednn) >= 3, engine.tactics
    got = next(iter(engine.create_execution_context().infer({"x": x.numpy()}).values()))
    want = model(x).detach().numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 3e-2
    x[1, 0, 5, 5] = float("nan")
    got = next(iter(engine.create_execution_context().infer({"x": x.numpy()}).values()))
    assert np.isnan(got[1]).all() and np.isfinite(got[0]).all()
