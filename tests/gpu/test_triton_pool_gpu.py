"""The Triton max-pool (kiln/backends/triton/pool.py) on CUDA against the MaxPool op's own kernel, at ResNet-50's
stem pool shape (skipped without CUDA)."""
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext, default_registry  # noqa: E402
from kiln.tactics import space  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_stem_pool_equals_the_op(dtype):
    node = Node("MaxPool", [Value("x")], [Value("y")], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                         "pads": [1, 1, 1, 1]}, name="pool")
    t = space.make(space.Choice("triton_pool"), node, {}, torch.device("cuda"))
    ctx = KernelContext(opset=17, device=torch.device("cuda"))
    x = torch.randn(32, 64, 112, 112, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    got = t.kernel(ctx, [x], node.attrs)
    want = default_registry().get("", "MaxPool").kernel(ctx, [x], node.attrs)
    assert torch.equal(got, want) and got.is_contiguous(memory_format=torch.channels_last)
