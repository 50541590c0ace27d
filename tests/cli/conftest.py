"""Fixtures for the CLI tests (helpers in cli_support.py)."""
import pytest

from cli_support import kiln, make_tiny_model


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    """A directory with tiny.onnx and tiny.engine (built by `kiln build`, its output kept for the build test)."""
    d = tmp_path_factory.mktemp("cli")
    make_tiny_model(d / "tiny.onnx")
    p = kiln("build", "tiny.onnx", "-o", "tiny.engine", "--shapes", "x:2x3x8x8", "--device", "cpu", cwd=d, check=0)
    return d, p
