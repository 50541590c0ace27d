"""The engine file: round trip, and every kind of bad file gives a clear KilnError."""
import json
import struct

import numpy as np
import pytest

import kiln
from kiln.engine import format as fmt


@pytest.fixture(scope="module")
def engine_bytes(small_model):
    return kiln.build(small_model).serialize()


def test_save_load_run_identical(small_model, tmp_path):
    engine = kiln.build(small_model)
    path = tmp_path / "m.engine"
    engine.save(path)
    x = np.random.default_rng(0).standard_normal((3, 4, 8, 8)).astype(np.float32)
    before = engine.create_execution_context().infer({"x": x})
    loaded = kiln.Engine.load(path)
    after = loaded.create_execution_context().infer({"x": x})
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert [l.kernel for l in loaded.report.layers] == [l.kernel for l in engine.report.layers]


def test_header_records_versions_device_and_config(engine_bytes):
    (hlen,) = struct.unpack("<Q", engine_bytes[12:20])
    header = json.loads(engine_bytes[20:20 + hlen])
    assert header["versions"]["kiln"] == kiln.__version__ and "torch" in header["versions"]
    assert header["device"]["type"] == "cpu"
    assert header["config"]["device"] == "cpu"
    assert engine_bytes[:8] == fmt.MAGIC


def test_no_pickle_or_code_in_file(engine_bytes):
    # Pickle streams start with 0x80 protocol bytes and end with '.'; the plan is JSON and weights safetensors.
    assert b"\x80\x04\x95" not in engine_bytes and b"__reduce__" not in engine_bytes


@pytest.mark.parametrize("cut", [0, 5, 19, 100, -1, -33])
def test_truncated(engine_bytes, cut):
    with pytest.raises(kiln.EngineFormatError, match="truncated|not a Kiln engine|corrupt"):
        kiln.Engine.deserialize(engine_bytes[:cut])


def test_tampered(engine_bytes):
    data = bytearray(engine_bytes)
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(kiln.EngineFormatError, match="checksum"):
        kiln.Engine.deserialize(bytes(data))


def test_foreign_file(small_model):
    with pytest.raises(kiln.EngineFormatError, match="not a Kiln engine"):
        kiln.Engine.deserialize(small_model.SerializeToString())


def test_too_new_version(engine_bytes):
    data = bytearray(engine_bytes[:-32])
    data[8:12] = struct.pack("<I", fmt.FORMAT_VERSION + 1)
    import hashlib
    data += hashlib.sha256(bytes(data)).digest()
    with pytest.raises(kiln.EngineFormatError, match="newer"):
        kiln.Engine.deserialize(bytes(data))


def _rewrite_header(engine_bytes, change):
    header, plan, weights = fmt.unpack(engine_bytes)
    change(header)
    return fmt.pack(header, plan, weights)


def test_built_for_a_gpu_loaded_here():
    pytest.importorskip("torch")
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")


def test_device_mismatch(engine_bytes):
    import torch

    def to_gpu(h):
        h["device"] = {"type": "cuda", "name": "NVIDIA Imaginary X1", "capability": [99, 0]}
    data = _rewrite_header(engine_bytes, to_gpu)
    with pytest.raises(kiln.DeviceMismatchError, match="Imaginary"):
        kiln.Engine.deserialize(data, strict_device=True)
    assert torch is not None


def test_malformed_plan(engine_bytes):
    header, plan, weights = fmt.unpack(engine_bytes)
    plan["nodes"][0]["inputs"] = [12345]
    with pytest.raises(kiln.EngineFormatError):
        kiln.Engine.deserialize(fmt.pack(header, plan, weights))
    plan["nodes"][0]["op"] = "NoSuchOp"
    plan["nodes"][0]["inputs"] = [0]
    with pytest.raises(kiln.KilnError, match="NoSuchOp"):
        kiln.Engine.deserialize(fmt.pack(header, plan, weights))


def test_missing_file(tmp_path):
    with pytest.raises(kiln.EngineFormatError, match="does not exist"):
        kiln.Engine.load(tmp_path / "nope.engine")
