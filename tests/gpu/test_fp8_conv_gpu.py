"""Kiln's fp8 TMA convolution (kiln/backends/triton/fp8_conv.py, tactic ``fp8_conv``) on a Hopper GPU: 4-d/5-d
TMA boxes with zero fill for the padding, fp8 wgmma, the fused epilogue and the requantized fp8 store, on
ResNet-50-like layers, against the layer's own CUDA kernel and float64 (skipped without CUDA or below compute
capability 9.0)."""
import functools

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0), reason="needs a Hopper GPU")]

from kiln.backends.triton.fp8_conv import CONFIGS  # noqa: E402
from kiln.backends.triton.fp8_gemm import CONFIGS as GEMM_CONFIGS  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.quantized import quantize  # noqa: E402
from kiln.tactics import space  # noqa: E402
from kiln.tune.tuner import _quantized_mismatch  # noqa: E402
import qconv_layers  # noqa: E402
from qconv_layers import nhwc, oracle  # noqa: E402

CUDA = torch.device("cuda")
CTX = KernelContext(opset=21, device=CUDA)


layer = functools.partial(qconv_layers.cuda_layer, fmt=qconv_layers.FP8)
run_both = functools.partial(qconv_layers.run_both, "fp8_conv")


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
    assert float((got.double() - ref).norm() / ref.norm()) < 2e-3
    assert float((own.double() - ref).norm() / ref.norm()) < 2e-3


def test_requantized_bottleneck_chain():
    """1x1 (GEMM) -> 3x3 -> 1x1 + residual, fp8 between them, as in a ResNet-50 bottleneck."""
    x = nhwc(torch.randn(32, 256, 28, 28, device=CUDA).half())
    n1, c1 = layer(256, 64, 1, 1, ["relu"], out_scale=0.05, out_zero_point=0, out_dtype="fp8e4m3")
    y1, own1 = run_both(n1, c1, x, config=GEMM_CONFIGS[0], gemm=True)
    assert y1.dtype == torch.float8_e4m3fn and _quantized_mismatch(y1, own1) is None
    n2, c2 = layer(64, 64, 3, 1, ["relu"], seed=1, input_quantized=1, x_scale=0.05, out_scale=0.05,
                   out_zero_point=0, out_dtype="fp8e4m3")
    y2, own2 = run_both(n2, c2, y1, config=CONFIGS[2])
    assert y2.dtype == torch.float8_e4m3fn and _quantized_mismatch(y2, own2) is None
    n3, c3 = layer(64, 256, 1, 1, ["add:4", "relu"], seed=2, input_quantized=1, x_scale=0.05)
    y3, own3 = run_both(n3, c3, y2, x, config=GEMM_CONFIGS[0], gemm=True)
    assert y3.dtype == torch.float16
    assert float((y3.double() - own3.double()).norm() / own3.double().norm()) < 2e-3


def test_captured_in_a_cuda_graph(graph_replay):
    node, consts = layer(64, 64, 3, 1, ["relu"])
    t = space.make(space.Choice("fp8_conv", {"config": list(CONFIGS[2])}), node, consts, CUDA)
    x = nhwc(torch.randn(4, 64, 20, 20, device=CUDA).half())
    ins = [x] + [consts[v.id] for v in node.inputs[1:4]] + [None]
    eager, y, fresh = graph_replay(lambda: t.kernel(CTX, list(ins), node.attrs), x)
    assert torch.equal(y, fresh) and not torch.equal(y, eager)


@pytest.mark.parametrize("k,gemm", [(1, True), (3, False)])
def test_block_output_with_fp8_copy(k, gemm):
    x = nhwc(torch.randn(32, 64, 28, 28, device=CUDA).half())
    r = nhwc(torch.randn(32, 256, 28, 28, device=CUDA).half())
    node, consts = layer(64, 256, k, 1, ["add:4", "relu"], q_scale=0.05, q_zero_point=0, q_dtype="fp8e4m3")
    (y, yq), (own_y, own_q) = run_both(node, consts, x, r, config=GEMM_CONFIGS[0] if gemm else CONFIGS[2], gemm=gemm)
    assert y.dtype == torch.float16 and yq.dtype == torch.float8_e4m3fn
    assert float((y.double() - own_y.double()).norm() / own_y.double().norm()) < 2e-3
    assert _quantized_mismatch(yq, own_q) is None
    assert torch.equal(yq.float(), quantize(y, 0.05, 0, "fp8e4m3").float())
