"""Engines that follow the model: an engine built on another device loads here, its tactics that do not apply
replaced and the change noted; strict_device=True keeps the old refusal. Without a GPU here, a GPU engine is a
CPU engine whose header claims a GPU and whose layers store GPU-only tactics."""
import numpy as np
import pytest
import torch

import kiln
from kiln.engine import format as fmt
from test_refit import X, assert_close, conv_bn_model, run

H100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "capability": [9, 0]}
GPU_TACTIC = {"name": "triton_gemm", "params": {"BLOCK_M": 64}}


def as_if_built_on_gpu(data: bytes) -> bytes:
    header, plan, weights = fmt.unpack(data)
    for k in ("plan_bytes", "weights_bytes", "raw_dtypes"):
        header.pop(k)
    header["device"], header["config"]["device"] = dict(H100), "cuda"
    for node in plan["nodes"]:
        if node["op"] in ("Conv", "Linear"):
            node["meta"]["tactic"] = dict(GPU_TACTIC)
    return fmt.pack(header, plan, weights)


@pytest.fixture(scope="module")
def cpu_engine():
    return kiln.build(conv_bn_model(1))


@pytest.fixture(scope="module")
def gpu_bytes(cpu_engine):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (a GPU here would run the engine where it was built)")
    return as_if_built_on_gpu(cpu_engine.serialize())


def test_gpu_engine_runs_on_the_cpu_with_notes_naming_the_replaced_tactics(cpu_engine, gpu_bytes):
    engine = kiln.Engine.deserialize(gpu_bytes)
    assert engine.device.type == "cpu"
    assert engine.load_notes[0].startswith("built for GPU 'NVIDIA H100 80GB HBM3' (compute capability 9.0), "
                                           "running on CPU")
    replaced = [n for n in engine.load_notes if "stored tactic triton_gemm/BLOCK_M=64 is not available here" in n]
    assert len(replaced) == 2 and all("running onednn" in n for n in replaced)
    assert_close(run(engine), run(cpu_engine))
    # Saved here, it records the device it was built for, and keeps its GPU tactics for the way back.
    again = kiln.Engine.deserialize(engine.serialize())
    assert again.header["built_for"] == H100 and again.load_notes[0].startswith("built for GPU")
    assert all(n.meta["tactic"] == GPU_TACTIC for n in again.graph.nodes if n.op_type in ("Conv", "Linear"))


def test_strict_device_keeps_the_refusal(gpu_bytes):
    with pytest.raises(kiln.DeviceMismatchError, match="CUDA is not available here"):
        kiln.Engine.deserialize(gpu_bytes, strict_device=True)
    with pytest.raises(kiln.DeviceMismatchError, match="CUDA is not available"):
        kiln.Engine.deserialize(gpu_bytes, device="cuda")


def test_stripped_gpu_engine_takes_its_weights_on_the_cpu(cpu_engine):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    stripped = as_if_built_on_gpu(cpu_engine.serialize(weights=False))
    engine = kiln.Engine.deserialize(stripped, weights_from=conv_bn_model(2))
    assert engine.device.type == "cpu" and engine.load_notes[0].startswith("built for GPU")
    assert_close(run(engine), run(kiln.build(conv_bn_model(2))))


def test_built_for_is_validated(cpu_engine):
    header, plan, weights = fmt.unpack(cpu_engine.serialize())
    for k in ("plan_bytes", "weights_bytes", "raw_dtypes"):
        header.pop(k)
    header["built_for"] = {"type": "cuda", "capability": [9]}
    with pytest.raises(kiln.EngineFormatError, match="header field 'built_for.capability'"):
        kiln.Engine.deserialize(fmt.pack(header, plan, weights))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_engine_runs_on_the_gpu(cpu_engine):
    engine = kiln.Engine.deserialize(cpu_engine.serialize(), device="cuda")
    assert engine.device.type == "cuda" and engine.load_notes[0].startswith("built for CPU")
    out = engine.create_execution_context().infer(X)["y"]
    np.testing.assert_allclose(out, run(cpu_engine), rtol=1e-3, atol=1e-3)  # TF32 off; cuDNN's sums differ
