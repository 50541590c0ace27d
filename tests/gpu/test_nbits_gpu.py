"""The Triton MatMulNBits kernels (kiln/backends/triton/nbits.py) compiled on a GPU against the op's own kernel:
the row kernel (a few rows) and the tiled one, float16 and float32 activations, at a decoder's sizes."""
import pytest
import torch

from kiln.backends.triton.nbits import CONFIGS, GEMV_MAX_ROWS, NBitsLayer
from kiln.ir.graph import Node, Value
from kiln.ops import KernelContext, default_registry

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

OWN = default_registry().get("com.microsoft", "MatMulNBits").kernel


@pytest.mark.parametrize("rows", [1, GEMV_MAX_ROWS, 16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("form", ["float32 scales, packed zero points", "float16 scales, no zero points"])
def test_matches_the_op_on_the_gpu(rows, dtype, config, form):
    k, n, block, dev = 1024, 1000, 32, torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    blocks = k // block
    b = torch.randint(0, 256, (n, blocks, block // 2), generator=g, dtype=torch.uint8).to(dev)
    scales = (torch.rand(n * blocks, generator=g) * 0.01 + 0.001).to(dev)
    zp = torch.randint(0, 256, (n, (blocks * 4 + 7) // 8), generator=g, dtype=torch.uint8).to(dev)
    if form.startswith("float16"):
        scales, zp = scales.half(), None
    vals = [Value("a"), Value("b"), Value("scales"), Value("zp") if zp is not None else None]
    node = Node("MatMulNBits", vals, [Value("y")], {"K": k, "N": n, "bits": 4, "block_size": block},
                name="mm", domain="com.microsoft")
    layer = NBitsLayer(node, OWN, {v.id: t for v, t in zip(vals[1:], (b, scales, zp)) if v is not None}, config)
    ctx = KernelContext(opset=17, device=dev)
    a = torch.randn(rows, k, device=dev, dtype=dtype)
    got = layer(ctx, [a, b, scales, zp], node.attrs)
    want = OWN(ctx, [a.float(), b, scales.float(), zp], node.attrs)
    assert not layer.fallbacks
    tol = 2e-3 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol * want.abs().max().item())
