"""Kiln's fp8 GEMM (kiln/backends/triton/fp8_gemm.py, tactic ``fp8_triton``) on a Hopper GPU: TMA copies, fp8
wgmma, the fused epilogue and the requantized fp8 store, against the layer's own CUDA kernel (torch._scaled_mm
in exact mode + torch epilogue) and float64 (skipped without CUDA or below compute capability 9.0)."""
import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0), reason="needs a Hopper GPU")]

from kiln.backends.triton.fp8_gemm import CONFIGS  # noqa: E402
from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.quantized import qlinear, quantize  # noqa: E402
from kiln.tactics import space  # noqa: E402
from kiln.tune.tuner import _quantized_mismatch  # noqa: E402

CUDA = torch.device("cuda")
CTX = KernelContext(opset=21, device=CUDA)


def layer(k, n, epilogue, seed=0, **extra):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    sw = float(w.abs().max()) / 448
    wq = (w / sw).clamp(-448, 448).to(torch.float8_e4m3fn)
    ins = [Value("x"), Value("wq", const=wq.to(CUDA)), Value("ws", const=torch.tensor([sw]).to(CUDA)),
           Value("b", const=(torch.randn(n, generator=g) * 0.1).half().to(CUDA)), Value("r")]
    attrs = {"x_scale": 4.0 / 448, "x_zero_point": 0, "x_dtype": "fp8e4m3", "epilogue": list(epilogue),
             "float_dtype": "float16", **extra}
    node = Node("QLinear", ins, [Value("y")], attrs, name="ql", domain="kiln")
    return node, {v.id: v.const for v in ins if v.const is not None}


def run_both(node, consts, x, r=None, config=CONFIGS[0]):
    try:
        t = space.make(space.Choice("fp8_triton", {"config": list(config)}), node, consts, CUDA)
    except space.NotApplicable as e:  # large tiles plus a residual tile exceed shared memory: said at build
        assert config != CONFIGS[0] and "shared memory" in str(e)
        pytest.skip(str(e))
    ins = [x] + [consts[v.id] for v in node.inputs[1:4]] + [r]
    got = t.kernel(CTX, list(ins), node.attrs)
    own = qlinear(CTX, list(ins), node.attrs)
    assert not t.kernel.fallbacks, t.kernel.fallbacks
    return got, own


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("epilogue", [[], ["gelu"], ["add:4"]])
def test_float_output(config, epilogue):
    m, k, n = 1000, 768, 512  # M not a multiple of any block: edge tiles
    node, consts = layer(k, n, epilogue)
    x = torch.randn(m, k, device=CUDA).half()
    r = torch.randn(m, n, device=CUDA).half() if epilogue == ["add:4"] else None
    got, own = run_both(node, consts, x, r, config)
    xq = quantize(x, node.attrs["x_scale"], 0, "fp8e4m3").double()
    ref = (xq @ consts[node.inputs[1].id].double().t()) * (consts[node.inputs[2].id].double() * node.attrs["x_scale"])
    ref = ref + consts[node.inputs[3].id].double()
    ref = F.gelu(ref) if epilogue == ["gelu"] else ref + r.double() if r is not None else ref
    assert got.dtype == own.dtype == torch.float16
    assert float((got.double() - ref).norm() / ref.norm()) < 2e-3
    assert float((own.double() - ref).norm() / ref.norm()) < 2e-3


def test_requantized_chain():
    node, consts = layer(768, 1024, ["gelu"], out_scale=0.01, out_zero_point=0, out_dtype="fp8e4m3")
    x = torch.randn(4096, 768, device=CUDA).half()
    y8, own8 = run_both(node, consts, x)
    assert y8.dtype == torch.float8_e4m3fn and _quantized_mismatch(y8, own8) is None
    nxt, c2 = layer(1024, 768, ["add:4"], seed=1, input_quantized=1, x_scale=0.01)
    r = torch.randn(4096, 768, device=CUDA).half()
    got, own = run_both(nxt, c2, y8, r)
    assert float((got.double() - own.double()).norm() / own.double().norm()) < 2e-3


def test_captured_in_a_cuda_graph(graph_replay):
    node, consts = layer(256, 256, ["gelu"])
    t = space.make(space.Choice("fp8_triton", {"config": list(CONFIGS[0])}), node, consts, CUDA)
    x = torch.randn(300, 256, device=CUDA).half()
    ins = [x] + [consts[v.id] for v in node.inputs[1:4]] + [None]
    eager, y, fresh = graph_replay(lambda: t.kernel(CTX, list(ins), node.attrs), x)
    assert torch.equal(y, fresh) and not torch.equal(y, eager)
