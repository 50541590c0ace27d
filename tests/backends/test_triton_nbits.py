"""The Triton MatMulNBits kernel (kiln/backends/triton/nbits.py, tactic ``triton_nbits``) on the CPU through
TRITON_INTERPRET=1 against the op's own kernel: 2/4/8 bits, zero-point forms, K not a multiple of the block,
edge tiles, bias; and its place in the tactic table."""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from kiln.backends.triton.nbits import CONFIGS, NBitsLayer  # noqa: E402
from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext, default_registry  # noqa: E402
from kiln.tactics import DEFAULT, NotApplicable  # noqa: E402

CTX = KernelContext(opset=17, device=torch.device("cpu"))
OWN = default_registry().get("com.microsoft", "MatMulNBits").kernel


def _case(bits, k, n, block, zero_points, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = (k + block - 1) // block
    b = torch.randint(0, 256, (n, blocks, block * bits // 8), generator=g, dtype=torch.uint8)
    scales = torch.rand(n * blocks, generator=g) * 0.1 + 0.01
    zp = {"none": None, "packed": torch.randint(0, 256, (n, (blocks * bits + 7) // 8), generator=g, dtype=torch.uint8),
          "float": torch.rand(n * blocks, generator=g) * (1 << bits)}[zero_points]
    bias_t = torch.randn(n, generator=g) if bias else None
    vals = [Value("a"), Value("b"), Value("scales"), Value("zp") if zp is not None else None, None,
            Value("bias") if bias else None]
    node = Node("MatMulNBits", vals, [Value("y")], {"K": k, "N": n, "bits": bits, "block_size": block},
                name="mm", domain="com.microsoft")
    constants = {v.id: t for v, t in zip(vals[1:], [b, scales, zp, None, bias_t]) if v is not None}
    return node, constants, [b, scales, zp, None, bias_t]


@pytest.mark.parametrize("bits,k,zero_points", [(4, 64, "none"), (4, 40, "packed"), (4, 48, "float"),
                                                (8, 32, "packed"), (2, 64, "none")])
@pytest.mark.parametrize("config", CONFIGS[:2])
def test_matches_the_op(bits, k, zero_points, config):
    n, block = 70, 16  # N not a multiple of BLOCK_N: edge tiles
    node, constants, weights = _case(bits, k, n, block, zero_points, bias=True)
    layer = NBitsLayer(node, OWN, constants, config)
    a = torch.randn(3, 5, k)
    got = layer(CTX, [a] + weights, node.attrs)
    want = OWN(CTX, [a] + weights, node.attrs)
    assert not layer.fallbacks and got.shape == want.shape == (3, 5, n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,k,block,zero_points", [(4, 64, 16, "none"), (4, 40, 16, "packed"), (4, 96, 32, "float"),
                                                      (8, 32, 16, "packed"), (2, 64, 16, "none"), (4, 200, 64, "packed")])
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[3]])
@pytest.mark.parametrize("rows", [1, 3])
def test_the_row_kernel_matches_the_op(bits, k, block, zero_points, config, rows):
    """A few rows (a decoder's token step) take the row kernel: edge tiles in N, K not a multiple of the
    block, blocks not a multiple of the groups a program takes at a time."""
    n = 70
    node, constants, weights = _case(bits, k, n, block, zero_points, bias=True)
    layer = NBitsLayer(node, OWN, constants, config)
    a = torch.randn(rows, k)
    got = layer(CTX, [a] + weights, node.attrs)
    want = OWN(CTX, [a] + weights, node.attrs)
    assert not layer.fallbacks and got.shape == want.shape == (rows, n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_an_inf_activation_gives_what_the_op_gives():
    """Inf times a weight of exactly zero is NaN, times any other weight is +-Inf, in both kernels."""
    node, constants, weights = _case(4, 32, 8, 16, "none", bias=False)
    for rows in (1, 6):
        a = torch.randn(rows, 32)
        a[0, 5] = float("inf")
        got = NBitsLayer(node, OWN, constants, CONFIGS[0])(CTX, [a] + weights, node.attrs)
        want = OWN(CTX, [a] + weights, node.attrs)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_an_old_four_number_config_still_binds():
    node, constants, _ = _case(4, 32, 8, 16, "none", bias=False)
    assert NBitsLayer(node, OWN, constants, (16, 64, 64, 4)).launch.gemv_config == (16, 4, 4)


def test_nan_in_the_activations_propagates():
    node, constants, weights = _case(4, 32, 8, 16, "none", bias=False)
    a = torch.randn(2, 32)
    a[1, 3] = float("nan")
    got = NBitsLayer(node, OWN, constants, CONFIGS[0])(CTX, [a] + weights, node.attrs)
    assert torch.isnan(got[1]).all() and not torch.isnan(got[0]).any()


def test_offered_on_cuda_only_and_refuses_act_order():
    node, constants, _ = _case(4, 32, 8, 16, "none", bias=False)
    names = {c.name for c in DEFAULT.candidates(node, torch.device("cuda"), 3)}
    assert {"torch", "triton_nbits"} <= names
    assert {c.name for c in DEFAULT.candidates(node, torch.device("cpu"), 3)} == {"torch"}
    node.set_input(4, Value("g_idx"))
    from kiln.tactics import Choice
    with pytest.raises(NotApplicable, match="g_idx"):
        DEFAULT.with_triton_on_cpu().make(Choice("triton_nbits", {"config": list(CONFIGS[0])}), node, constants,
                                          torch.device("cpu"))
