"""The Triton max-pool (kiln/backends/triton/pool.py, tactic ``triton_pool``) on the CPU through
TRITON_INTERPRET=1 against the MaxPool op's own kernel: window geometries, edges and padding, NaN, what it
refuses; and its GPU form compiled for sm_90."""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from kiln.backends.triton import aot  # noqa: E402
from kiln.backends.triton.ops import Unsupported  # noqa: E402
from kiln.backends.triton.pool import MaxPoolLayer, max_pool_source  # noqa: E402
from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext, default_registry  # noqa: E402
from kiln.tactics import space  # noqa: E402

CTX = KernelContext(opset=17, device=torch.device("cpu"))
OWN = default_registry().get("", "MaxPool").kernel


def node(**attrs):
    return Node("MaxPool", [Value("x")], [Value("y")], attrs, name="pool")


def nhwc(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("attrs,shape", [
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, (2, 70, 9, 11)),  # ResNet's stem pool
    ({"kernel_shape": [2, 2], "strides": [2, 2]}, (1, 8, 6, 6)),
    ({"kernel_shape": [3, 2], "strides": [1, 2], "pads": [1, 0, 1, 0]}, (3, 5, 7, 4)),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_the_op(attrs, shape, dtype):
    n = node(**attrs)
    layer = MaxPoolLayer(n, OWN)
    x = nhwc(torch.randn(shape).to(dtype))
    got = layer(CTX, [x], n.attrs)
    want = OWN(CTX, [x], n.attrs)
    assert not layer.fallbacks and got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)


@pytest.mark.parametrize("q_dtype,storage,tag", [("fp8e4m3", torch.float8_e4m3fn, "fp8"), ("int8", torch.int8, "s8")])
def test_8bit_output_of_max_pool_quantize(q_dtype, storage, tag):
    from kiln.ops.quantized import max_pool_quantize
    from kiln.tune.tuner import _quantized_mismatch
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "q_scale": 0.02, "q_zero_point": 0,
             "q_dtype": q_dtype}
    n = Node("MaxPoolQuantize", [Value("x")], [Value("y")], attrs, name="pq", domain="kiln")
    layer = MaxPoolLayer(n, max_pool_quantize)
    x = nhwc(torch.randn(2, 16, 9, 9).half() * 3)  # |x| up to ~12: int8 codes saturate at 127 (2.54)
    got = layer(CTX, [x], attrs)
    want = max_pool_quantize(CTX, [x], attrs)
    assert not layer.fallbacks and got.dtype == want.dtype == storage and layer.name.endswith(f"[{tag} out]")
    assert _quantized_mismatch(got, want) is None
    if q_dtype == "int8":
        assert int(got.max()) == 127 and torch.equal(got, want)  # saturated, and code for code the reference


def test_an_asymmetric_int8_pool_output_is_refused():
    attrs = {"kernel_shape": [2, 2], "q_scale": 0.02, "q_zero_point": 3, "q_dtype": "int8"}
    with pytest.raises(Unsupported, match="zero point 3"):
        MaxPoolLayer(Node("MaxPoolQuantize", [Value("x")], [Value("y")], attrs, name="pq", domain="kiln"), OWN)


def test_nan_propagates_and_plain_layout_falls_back_counted():
    n = node(kernel_shape=[2, 2], strides=[2, 2])
    layer = MaxPoolLayer(n, OWN)
    x = nhwc(torch.randn(1, 4, 4, 4))
    x[0, 1, 0, 0] = float("nan")
    got = layer(CTX, [x], n.attrs)
    assert torch.isnan(got[0, 1, 0, 0]) and not torch.isnan(got).sum() > 1
    plain = layer(CTX, [torch.randn(1, 4, 4, 4)], n.attrs)  # NCHW: the op's own kernel, counted
    assert plain.shape == (1, 4, 2, 2) and layer.fallbacks == {"an input that is not channels-last": 1}


@pytest.mark.parametrize("attrs,why", [
    ({"kernel_shape": [3]}, "1-d"), ({"kernel_shape": [2, 2], "dilations": [2, 2]}, "dilations"),
    ({"kernel_shape": [2, 2], "ceil_mode": 1}, "ceil_mode"), ({"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}, "asym"),
    ({"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER"}, "auto_pad"),
])
def test_refuses(attrs, why):
    with pytest.raises(Unsupported, match=why):
        MaxPoolLayer(node(**attrs), OWN)


def test_factory_and_space_row():
    on_cpu = space.DEFAULT.with_triton_on_cpu()  # the interpreter runs it on the CPU
    t = on_cpu.make(space.Choice("triton_pool"), node(kernel_shape=[2, 2]), {}, torch.device("cpu"))
    assert t.name == "triton_max_pool"
    with pytest.raises(space.NotApplicable, match="triton_on_cpu"):  # the default library: not on a CPU
        space.make(space.Choice("triton_pool"), node(kernel_shape=[2, 2]), {}, torch.device("cpu"))
    two = Node("MaxPool", [Value("x")], [Value("y"), Value("i")], {"kernel_shape": [2, 2]}, name="p")
    with pytest.raises(space.NotApplicable, match="Indices"):
        on_cpu.make(space.Choice("triton_pool"), two, {}, torch.device("cpu"))
    assert [c.name for c in space.candidates(two, torch.device("cuda"))] == ["torch", "triton_pool"]


def test_sm90_sources_compile():
    jobs = []
    outs = {"": "*fp16", "fp8e4m3": "*fp8e4nv", "int8": "*i8"}
    for q_out, out_ty in outs.items():
        sig = {"x_ptr": "*fp16", "out_ptr": out_ty}
        sig.update({k: "i32" for k in ("P", "H", "W", "OH", "OW", "C", "sxn", "sxh", "sxw", "son", "soh", "sow")})
        sig["inv_q_scale"] = "fp32"
        jobs.append({"source": max_pool_source(False, q_out), "signature": sig, "num_warps": 4, "num_stages": 3,
                     "constexprs": dict(KH=3, KW=3, SH=2, SW=2, PH=1, PW=1, BLOCK_P=32, BLOCK_C=64),
                     "expect": ["ld.global"] + (["e4m3"] if q_out == "fp8e4m3" else [])})
    assert aot.compile_in_subprocess(jobs) == ["", "", ""]
