"""GPU checks (run on a machine with CUDA: `python -m pytest tests/gpu -q`; skipped elsewhere).

Engines built for CUDA match the CPU reference; CUDA graphs replay correctly for several shapes;
contexts on several threads and streams; fp16 engines stay close; kiln.trt with device pointers."""
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny_resnet.onnx"
PROFILE = kiln.Profile.of(image=((1, 3, 64, 64), (8, 3, 64, 64), (32, 3, 64, 64)))


@pytest.fixture(scope="module")
def cpu_engine():
    return kiln.build(EXAMPLE, kiln.BuilderConfig(profiles=(PROFILE,)))


@pytest.fixture(scope="module")
def gpu_engine():
    return kiln.build(EXAMPLE, kiln.BuilderConfig(device="cuda", profiles=(PROFILE,)))


@pytest.mark.parametrize("batch", [1, 5, 32])
def test_cuda_engine_matches_cpu(cpu_engine, gpu_engine, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
    ref = cpu_engine.create_execution_context().infer({"image": x})["logits"]
    ctx = gpu_engine.create_execution_context()
    for _ in range(3):  # first call captures the CUDA graph, later calls replay it
        got = ctx.infer({"image": x})["logits"]
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3)
    assert not ctx.notes, ctx.notes  # capture did not fall back


def test_torch_io_on_device_and_save_load(gpu_engine, tmp_path):
    path = tmp_path / "gpu.engine"
    gpu_engine.save(path)
    loaded = kiln.Engine.load(path)
    x = torch.randn(4, 3, 64, 64, device="cuda")
    a = gpu_engine.create_execution_context().infer({"image": x})["logits"]
    b = loaded.create_execution_context().infer({"image": x})["logits"]
    assert a.is_cuda and b.is_cuda
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_contexts_on_threads_and_streams(gpu_engine, cpu_engine):
    bad = []

    def work(seed):
        try:
            run(seed)
        except Exception as e:  # noqa: BLE001 - a thread's exception must fail the test
            bad.append((seed, repr(e)))

    def run(seed):
        ctx = gpu_engine.create_execution_context()
        rng = np.random.default_rng(seed)
        for i in range(10):
            x = rng.standard_normal((1 + (seed + i) % 8, 3, 64, 64)).astype(np.float32)
            ref = cpu_engine.create_execution_context().infer({"image": x})["logits"]
            if not np.allclose(ctx.infer({"image": x})["logits"], ref, rtol=2e-3, atol=2e-3):
                bad.append((seed, i))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not bad, bad


def test_async_infer(gpu_engine):
    ctx = gpu_engine.create_execution_context()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    h = ctx.infer_async({"image": x})
    out = h.wait()["logits"]
    torch.testing.assert_close(out, ctx.infer({"image": x})["logits"])


def test_fp16_engine(cpu_engine):
    eng = kiln.build(EXAMPLE, kiln.BuilderConfig(device="cuda", fp16=True, profiles=(PROFILE,)))
    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    ref = cpu_engine.create_execution_context().infer({"image": x})["logits"]
    got = eng.create_execution_context().infer({"image": x})["logits"]
    cos = float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref))
    assert got.dtype == np.float32 and cos > 0.999, cos


def test_trt_with_device_pointers(cpu_engine):
    import kiln.trt as trt
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(EXAMPLE))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    config.add_optimization_profile(profile)
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    ctx = engine.create_execution_context()
    x = torch.randn(4, 3, 64, 64, device="cuda")
    ctx.set_input_shape("image", tuple(x.shape))
    y = torch.empty(tuple(ctx.get_tensor_shape("logits")), device="cuda")
    ctx.set_tensor_address("image", x.data_ptr())
    ctx.set_tensor_address("logits", y.data_ptr())
    stream = torch.cuda.Stream()
    ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    ref = cpu_engine.create_execution_context().infer({"image": x.cpu().numpy()})["logits"]
    np.testing.assert_allclose(y.cpu().numpy(), ref, rtol=2e-3, atol=2e-3)
