"""INT8 / FP8 kernels and builds on CUDA (skipped without a GPU). Run: pytest tests/gpu/test_quant_gpu.py -s

Each quantized CUDA path is checked against the CPU path (exact integer arithmetic) or a float reference:
torch._int_mm (with padding to M > 16 and K, N multiples of 8), the exact-float conv route with TF32
off, torch._scaled_mm for FP8 E4M3 (Hopper and later), and whole INT8 engines built for cuda.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
sys.path.insert(0, str(Path(__file__).parent.parent / "quant"))

from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.quantized import int8_mm, qconv, qlinear  # noqa: E402
from kiln.quant.rewrite import weight_q  # noqa: E402

CUDA = torch.device("cuda")
CTX_GPU = KernelContext(opset=17, device=CUDA)
CTX_CPU = KernelContext(opset=17, device=torch.device("cpu"))


@pytest.mark.parametrize("m,k,n", [(1, 8, 8), (5, 30, 7), (17, 64, 64), (300, 384, 1536)])
def test_int_mm_exact_on_gpu(m, k, n):
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), dtype=torch.int8)
    got = int8_mm(a.to(CUDA), b.to(CUDA)).cpu()
    assert torch.equal(got.long(), a.long() @ b.long())
    got_t = int8_mm(a.to(CUDA), b.t().contiguous().t().to(CUDA)).cpu()  # column-major weight view
    assert torch.equal(got_t.long(), a.long() @ b.long())


@pytest.mark.parametrize("zp,dtype", [(0, "int8"), (128, "uint8")])
def test_qlinear_gpu_equals_cpu(zp, dtype):
    x, w, b = torch.randn(3, 40, 96), torch.randn(72, 96), torch.randn(72)
    wq, sw = weight_q(w, "int8")
    attrs = {"x_scale": float(x.abs().max()) / 100, "x_zero_point": zp, "x_dtype": dtype, "epilogue": ["relu"]}
    cpu = qlinear(CTX_CPU, [x, wq, sw, b], attrs)
    gpu = qlinear(CTX_GPU, [x.to(CUDA), wq.to(CUDA), sw.to(CUDA), b.to(CUDA)], attrs).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(pads=[1, 1, 1, 1]), dict(strides=[2, 2], group=2), dict(pads=[0, 1, 2, 1])])
def test_qconv_gpu_equals_cpu(kw):
    x, w = torch.randn(2, 8, 15, 15), torch.randn(16, 8 // kw.get("group", 1), 3, 3)
    wq, sw = weight_q(w, "int8")
    attrs = {"x_scale": float(x.abs().max()) / 120, "epilogue": [], **kw}
    cpu = qconv(CTX_CPU, [x, wq, sw], attrs)
    gpu = qconv(CTX_GPU, [x.to(CUDA), wq.to(CUDA), sw.to(CUDA)], attrs).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9),
                    reason="FP8 GEMM needs Ada/Hopper (sm_89+)")
def test_fp8_scaled_mm_matches_emulation():
    x, w = torch.randn(40, 256), torch.randn(128, 256)
    wq, sw = weight_q(w, "fp8e4m3")
    attrs = {"x_scale": float(x.abs().max()) / 448, "x_dtype": "fp8e4m3"}
    emu = qlinear(CTX_CPU, [x, wq, sw], attrs)
    gpu = qlinear(CTX_GPU, [x.to(CUDA), wq.to(CUDA), sw.to(CUDA)], attrs).cpu()
    # Hopper's FP8 tensor cores accumulate with fewer bits than float32 (about 1e-3 relative was measured),
    # so the GPU result is close to the exact emulation, not equal.
    torch.testing.assert_close(gpu, emu, rtol=2e-2, atol=2e-2 * float(emu.abs().max()))
    ref = x @ w.t()
    assert float(torch.nn.functional.cosine_similarity(gpu.flatten(), ref.flatten(), dim=0)) > 0.99


def test_digits_int8_engine_on_gpu(tmp_path):
    import kiln
    from digits import accuracy, batches, train_digits
    path = tmp_path / "digits.onnx"
    xtr, xte, yte = train_digits(path)
    acc32 = accuracy(kiln.build(path, device="cuda"), xte, yte)
    for method in ("minmax", "entropy2", "percentile"):
        e = kiln.build(path, device="cuda", int8=True, int8_calibrator=batches(xtr, 64, 8), calibration_method=method)
        assert sum(l.op in ("kiln::QConv", "kiln::QLinear") for l in e.report.layers) == 5
        acc8 = accuracy(e, xte, yte)
        print(f"GPU digits {method}: fp32 {acc32:.2f}% int8 {acc8:.2f}%")
        assert acc8 >= acc32 - 0.5
    e = kiln.build(path, device="cuda", fp8=True, int8_calibrator=batches(xtr, 64, 8))
    acc8 = accuracy(e, xte, yte)
    print(f"GPU digits fp8: {acc8:.2f}%")
    assert acc8 >= acc32 - 1.0


def test_cpu_and_gpu_int8_engines_agree(tmp_path):
    import kiln
    from digits import batches, train_digits
    path = tmp_path / "digits.onnx"
    xtr, xte, _ = train_digits(path)
    cache = tmp_path / "calib.json"
    cpu = kiln.build(path, int8=True, int8_calibrator=batches(xtr, 64, 8), calibration_cache=str(cache))
    gpu = kiln.build(path, device="cuda", int8=True, calibration_cache=str(cache))
    x = {"x": xte[:128]}
    a = cpu.create_execution_context().infer(x)["logits"]
    b = gpu.create_execution_context().infer(x)["logits"]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))
