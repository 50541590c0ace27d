"""The int8 TMA kernels (tactics ``int8_conv`` / ``int8_triton``: kiln/backends/triton/fp8_conv.py and fp8_gemm.py
with wgmma s8) on a Hopper GPU: ResNet-50-like convolutions in every config against the layer's own CUDA kernel
and float64, a requantized int8 bottleneck chain, a block output with its int8 copy, the int8 stem pool, a BERT-like
QLinear, and capture in a CUDA graph (skipped without CUDA or below compute capability 9.0)."""
import functools

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0), reason="needs a Hopper GPU")]

from kiln.backends.triton.fp8_conv import CONFIGS  # noqa: E402
from kiln.backends.triton.fp8_gemm import CONFIGS as GEMM_CONFIGS  # noqa: E402
from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.quantized import max_pool_quantize, qlinear, quantize  # noqa: E402
from kiln.tactics import space  # noqa: E402
from kiln.tune.tuner import _quantized_mismatch  # noqa: E402
import qconv_layers  # noqa: E402
from qconv_layers import nhwc, oracle  # noqa: E402

CUDA = torch.device("cuda")
CTX = KernelContext(opset=21, device=CUDA)


layer = functools.partial(qconv_layers.cuda_layer, fmt=qconv_layers.INT8)
run_both = functools.partial(qconv_layers.run_both, "int8_conv")


@pytest.mark.parametrize("c,o,h,k,stride", [(64, 64, 56, 3, 1), (128, 128, 56, 3, 2), (256, 256, 14, 3, 1),
                                            (512, 512, 7, 3, 1), (256, 512, 56, 1, 2), (64, 256, 13, 3, 1)])
@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_float_output(c, o, h, k, stride, config):
    node, consts = layer(c, o, k, stride, ["relu"])
    try:
        x = nhwc(torch.randn(16, c, h, h, device=CUDA).half())
        got, own = run_both(node, consts, x, config=CONFIGS[config])
    except space.NotApplicable as e:  # BLOCK_K over C, or over shared memory: said at build
        assert "BLOCK_K" in str(e) or "shared memory" in str(e)
        pytest.skip(str(e))
    ref = oracle(node, x)
    assert got.dtype == own.dtype == torch.float16
    assert float((got.double() - ref).norm() / ref.norm()) < 1e-3
    assert float((own.double() - ref).norm() / ref.norm()) < 1e-3


def test_requantized_bottleneck_chain():
    """1x1 (GEMM) -> 3x3 -> 1x1 + residual, int8 between them, as in a ResNet-50 bottleneck."""
    x = nhwc(torch.randn(32, 256, 28, 28, device=CUDA).half())
    n1, c1 = layer(256, 64, 1, 1, ["relu"], out_scale=0.05, out_zero_point=0, out_dtype="int8")
    y1, own1 = run_both(n1, c1, x, config=GEMM_CONFIGS[0], gemm=True)
    assert y1.dtype == torch.int8 and _quantized_mismatch(y1, own1) is None
    n2, c2 = layer(64, 64, 3, 1, ["relu"], seed=1, input_quantized=1, x_scale=0.05, out_scale=0.05,
                   out_zero_point=0, out_dtype="int8")
    y2, own2 = run_both(n2, c2, y1, config=CONFIGS[2])
    assert y2.dtype == torch.int8 and _quantized_mismatch(y2, own2) is None
    n3, c3 = layer(64, 256, 1, 1, ["add:4", "relu"], seed=2, input_quantized=1, x_scale=0.05)
    y3, own3 = run_both(n3, c3, y2, x, config=GEMM_CONFIGS[0], gemm=True)
    assert y3.dtype == torch.float16
    assert float((y3.double() - own3.double()).norm() / own3.double().norm()) < 2e-3


@pytest.mark.parametrize("k,gemm", [(1, True), (3, False)])
def test_block_output_with_int8_copy(k, gemm):
    x = nhwc(torch.randn(32, 64, 28, 28, device=CUDA).half())
    r = nhwc(torch.randn(32, 256, 28, 28, device=CUDA).half())
    node, consts = layer(64, 256, k, 1, ["add:4", "relu"], q_scale=0.05, q_zero_point=0, q_dtype="int8")
    (y, yq), (own_y, own_q) = run_both(node, consts, x, r, config=GEMM_CONFIGS[0] if gemm else CONFIGS[2], gemm=gemm)
    assert y.dtype == torch.float16 and yq.dtype == torch.int8
    assert float((y.double() - own_y.double()).norm() / own_y.double().norm()) < 2e-3
    assert _quantized_mismatch(yq, own_q) is None and _quantized_mismatch(yq, quantize(y, 0.05, 0, "int8")) is None


def test_int8_stem_pool():
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "q_scale": 0.02, "q_zero_point": 0,
             "q_dtype": "int8"}
    n = Node("MaxPoolQuantize", [Value("x")], [Value("y")], attrs, name="pool", domain="kiln")
    t = space.make(space.Choice("triton_pool"), n, {}, CUDA)
    x = nhwc(torch.randn(64, 64, 112, 112, device=CUDA).half())
    got = t.kernel(CTX, [x], attrs)
    assert got.dtype == torch.int8 and t.name == "triton_max_pool[s8 out]"
    assert _quantized_mismatch(got, max_pool_quantize(CTX, [x], attrs)) is None


def test_bert_like_qlinear():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(3072, 768, generator=g) / 768 ** 0.5
    sw = w.abs().amax(1) / 127
    wq = torch.round(w / sw[:, None]).to(torch.int8).to(CUDA)
    b = (torch.randn(3072, generator=g) * 0.1).to(CUDA)
    ins = [Value("x"), Value("wq", const=wq), Value("ws", const=sw.to(CUDA)), Value("b", const=b)]
    attrs = {"x_scale": 4.0 / 127, "x_zero_point": 0, "x_dtype": "int8", "epilogue": ["gelu"]}
    node = Node("QLinear", ins, [Value("y")], attrs, name="ffn1", domain="kiln")
    consts = {v.id: v.const for v in ins[1:]}
    x = torch.randn(8, 128, 768, device=CUDA).half()
    for config in GEMM_CONFIGS:
        try:
            t = space.make(space.Choice("int8_triton", {"config": list(config)}), node, consts, CUDA)
        except space.NotApplicable as e:
            assert "shared memory" in str(e)
            continue
        got = t.kernel(CTX, [x, wq, sw.to(CUDA), b], attrs)
        own = qlinear(CTX, [x, wq, sw.to(CUDA), b], attrs)
        assert got.dtype == own.dtype == torch.float16
        assert float((got.double() - own.double()).norm() / own.double().norm()) < 2e-3, config


def test_captured_in_a_cuda_graph(graph_replay):
    node, consts = layer(64, 64, 3, 1, ["relu"])
    t = space.make(space.Choice("int8_conv", {"config": list(CONFIGS[2])}), node, consts, CUDA)
    x = nhwc(torch.randn(4, 64, 20, 20, device=CUDA).half())
    ins = [x] + [consts[v.id] for v in node.inputs[1:4]] + [None]
    eager, y, fresh = graph_replay(lambda: t.kernel(CTX, list(ins), node.attrs), x)
    assert torch.equal(y, fresh) and not torch.equal(y, eager)
