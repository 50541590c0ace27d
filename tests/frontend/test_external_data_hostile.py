"""External data entries are untrusted input: every hostile location, offset or length gives ModelFormatError
naming the tensor (never OSError, ValueError or MemoryError), checked before anything is read or allocated."""
from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln

W = np.arange(32, dtype=np.float32).reshape(4, 8)
Q = np.array([-8, -1, 0, 3, 7], dtype=np.int8)  # int4: 5 values packed in 3 bytes


def save_model(folder) -> str:
    """Y = X + W and D = DequantizeLinear(Q: int4), every initializer in folder/w.bin."""
    g = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"], name="add"),
         helper.make_node("DequantizeLinear", ["Q", "s"], ["D"], name="dq")], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 8]),
         helper.make_tensor_value_info("D", TensorProto.FLOAT, [5])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(Q.astype(ml_dtypes.int4), "Q"),
         numpy_helper.from_array(np.array(0.5, np.float32), "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    path = os.path.join(folder, "m.onnx")
    onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    return path


def tamper(path: str, tensor: str = "W", drop: tuple = (), dims: list | None = None, **entries) -> None:
    """Rewrite ``tensor``'s external_data entries in the model file (the data file is left as it is)."""
    m = onnx.load(path, load_external_data=False)
    t = next(x for x in m.graph.initializer if x.name == tensor)
    info = {e.key: e.value for e in t.external_data}
    info.update(entries)
    for k in drop:
        info.pop(k, None)
    del t.external_data[:]
    for k, v in info.items():
        t.external_data.add(key=k, value=v)
    if dims is not None:
        t.ClearField("dims")
        t.dims.extend(dims)
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def refused(path: str, *words: str, tensor: str = "W") -> str:
    with pytest.raises(kiln.ModelFormatError) as e:
        kiln.parse(path)
    msg = str(e.value)
    for w in (repr(tensor),) + words:
        assert w in msg, (w, msg)
    return msg


@pytest.fixture
def model(tmp_path):
    (tmp_path / "model").mkdir()
    return save_model(str(tmp_path / "model"))


def test_untampered_model_loads(model):
    out = kiln.interpret(kiln.parse(model), {"X": np.zeros((4, 8), np.float32)})
    np.testing.assert_array_equal(out["Y"], W)
    np.testing.assert_array_equal(out["D"], Q.astype(np.float32) * 0.5)


def test_missing_length_reads_what_the_shape_needs(model):
    tamper(model, drop=("length",))
    out = kiln.interpret(kiln.parse(model), {"X": np.zeros((4, 8), np.float32)})
    np.testing.assert_array_equal(out["Y"], W)


@pytest.mark.parametrize("key, value", [
    ("offset", "-8"), ("offset", "abc"), ("offset", "1e12"), ("offset", ""), ("offset", "0x10"), ("offset", "9" * 5000),
    ("length", "-128"), ("length", "1e12"), ("length", "12.5"),
])
def test_non_integer_or_negative_offset_and_length(model, key, value):
    tamper(model, **{key: value})
    refused(model, key, "not a non-negative integer")


def test_offset_past_the_end(model):
    size = os.path.getsize(os.path.join(os.path.dirname(model), "w.bin"))
    tamper(model, offset=str(size + 100))
    refused(model, "past the end", f"({size} bytes)")
    tamper(model, offset=str(size - 8))  # starts inside, runs out
    refused(model, "past the end")


@pytest.mark.parametrize("length", ["1000000000000", "124", "132", "0"])
def test_length_must_match_the_shape(model, length):
    tamper(model, length=length)  # W is 4x8 float32: 128 bytes; 1e12 must fail before any allocation
    refused(model, "length", "128 bytes")


def test_huge_shape_without_length_is_past_the_end(model):
    tamper(model, drop=("length",), dims=[1 << 40, 1 << 20])
    refused(model, "past the end")


def test_negative_dim(model):
    tamper(model, dims=[-4, -8])
    refused(model, "negative dimension")


def test_subbyte_length_is_packed(model):
    tamper(model, tensor="Q", length="5")  # 5 int4 values take 3 bytes, not 5
    refused(model, "3 bytes", tensor="Q")


def test_location_escaping_the_folder(model, tmp_path):
    (tmp_path / "outside.bin").write_bytes(bytes(4096))
    tamper(model, location="../outside.bin")
    refused(model, "outside")
    tamper(model, location="sub/../../outside.bin")
    refused(model, "outside")


def test_absolute_location(model, tmp_path):
    (tmp_path / "abs.bin").write_bytes(bytes(4096))
    tamper(model, location=str(tmp_path / "abs.bin"))
    refused(model, "absolute")


def test_symlink_pointing_out(model, tmp_path):
    (tmp_path / "secret.bin").write_bytes(bytes(4096))
    os.symlink(tmp_path / "secret.bin", os.path.join(os.path.dirname(model), "link.bin"))
    tamper(model, location="link.bin")
    refused(model, "outside")


@pytest.mark.parametrize("location, words", [
    ("nothere.bin", ("missing",)), ("", ("no location",)), ("w\x00.bin", ("not a usable path",)),
    (".", ("outside",)),
])
def test_missing_or_unusable_location(model, location, words):
    tamper(model, location=location)
    refused(model, *words)


def test_location_is_a_folder(model):
    os.mkdir(os.path.join(os.path.dirname(model), "sub"))
    tamper(model, location="sub")
    refused(model, "missing")
