"""Caller-provided output buffers and byte order: a buffer that cannot take its output is refused with an
InputError before the run (never silently cast or truncated); big-endian inputs are converted."""
import numpy as np
import pytest
import torch

import kiln
from kiln.errors import InputError


@pytest.fixture(scope="module")
def ctx(small_model):
    return kiln.build(small_model).create_execution_context()


X = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)


def test_right_buffer_is_filled(ctx):
    want = ctx.infer({"x": X})
    buf = np.zeros((2, 8, 8, 8), np.float32)
    got = ctx.infer({"x": X}, outputs={"y": buf})
    assert got["y"] is buf
    np.testing.assert_array_equal(buf, want["y"])
    tbuf = torch.zeros(2, 8, 8, 8)
    ctx.infer({"x": torch.from_numpy(X)}, outputs={"y": tbuf})
    np.testing.assert_array_equal(tbuf.numpy(), want["y"])


@pytest.mark.parametrize("buf,what", [
    (np.zeros((2, 8, 8, 8), np.float16), "dtype float16"),
    (np.zeros((2, 8, 8, 8), np.int32), "dtype int32"),
    (np.zeros((2, 8, 8, 8), ">f4"), "byte order"),
    (np.zeros((3, 8, 8, 8), np.float32), "shape"),
    (torch.zeros(2, 8, 8, 8, dtype=torch.float64), "dtype float64"),
    (torch.zeros(2, 8, 8, 8, dtype=torch.int32), "dtype int32"),
    ([0.0] * 4, "numpy array or torch tensor"),
])
def test_wrong_buffer_refused(ctx, buf, what):
    x = torch.from_numpy(X) if isinstance(buf, torch.Tensor) else X
    with pytest.raises(InputError, match=what):
        ctx.infer({"x": x}, outputs={"y": buf})


def test_read_only_buffer_refused(ctx):
    buf = np.zeros((2, 8, 8, 8), np.float32)
    buf.flags.writeable = False
    with pytest.raises(InputError, match="read-only"):
        ctx.infer({"x": X}, outputs={"y": buf})


def test_unknown_output_name_refused(ctx):
    with pytest.raises(InputError, match="unknown output 'nope'"):
        ctx.infer({"x": X}, outputs={"nope": np.zeros(1, np.float32)})


def test_big_endian_input_converted(ctx):
    want = ctx.infer({"x": X})["y"]
    got = ctx.infer({"x": X.astype(">f4")})["y"]
    np.testing.assert_array_equal(got, want)
