"""The Triton kernel cache folder is untrusted: a planted ``__pycache__/*.pyc`` is never run (kernels are compiled
from the verified text, not imported), and a folder someone else owns or can write, or a symlink, is refused
for a fresh private one. On the CPU through TRITON_INTERPRET=1."""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import importlib._bootstrap_external as bootstrap  # noqa: E402
import importlib.util  # noqa: E402
import logging  # noqa: E402
import stat  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from kiln.backends.triton import cache  # noqa: E402

KERNEL = """import triton
import triton.language as tl

# {nonce}
@triton.jit
def kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m) * 2.0 + 1.0, mask=m)
"""


def run_kernel(mod) -> torch.Tensor:
    x = torch.arange(10, dtype=torch.float32)
    y = torch.zeros_like(x)
    mod.kernel[(1,)](x, y, 10, BLOCK=16)
    return y


def load(tmp_path, nonce: str):
    cache.clear_memory()
    source = KERNEL.format(nonce=nonce)
    return cache.load(cache.digest("trust-test", nonce), lambda: source), source


def plant_pyc(py_path, marker) -> str:
    """A .pyc beside ``py_path`` that the importer would accept for it (its header holds the .py's mtime and
    size), whose code writes ``marker``; returns where it is."""
    st = os.stat(py_path)
    evil = compile(f"open({str(marker)!r}, 'w').write('planted')\nkernel = None\n", str(py_path), "exec")
    pyc = importlib.util.cache_from_source(str(py_path))
    os.makedirs(os.path.dirname(pyc), exist_ok=True)
    with open(pyc, "wb") as f:
        f.write(bootstrap._code_to_timestamp_pyc(evil, int(st.st_mtime), st.st_size))
    return pyc


def test_planted_pyc_is_never_run(tmp_path):
    d = tmp_path / "kernels"
    cache.set_cache_dir(d)
    mod, source = load(tmp_path, "pyc")
    py = mod.__file__
    assert os.path.dirname(py) == str(d) and open(py).read() == source
    marker = tmp_path / "marker"
    pyc = plant_pyc(py, marker)
    # The plant is a real threat: Python's importer runs it in place of the (verified) text.
    spec = importlib.util.spec_from_file_location("planted_check", py)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert marker.read_text() == "planted"
    marker.unlink()
    # Kiln, as a new process would: the text is found on disk, verified, and compiled itself.
    before = cache.stats["disk_hits"]
    mod2, _ = load(tmp_path, "pyc")
    assert cache.stats["disk_hits"] == before + 1
    assert not marker.exists() and mod2.kernel is not None
    assert run_kernel(mod2).tolist() == [2.0 * i + 1.0 for i in range(10)]
    assert os.path.exists(pyc)  # (left alone: never read, so never a danger)


def test_new_cache_folder_is_private(tmp_path):
    d = tmp_path / "a" / "kernels"
    cache.set_cache_dir(d)
    mod, _ = load(tmp_path, "private")
    assert os.path.dirname(mod.__file__) == str(d)
    assert stat.S_IMODE(os.stat(d).st_mode) & 0o077 == 0


def refused(tmp_path, caplog, d, nonce):
    cache.set_cache_dir(d)
    with caplog.at_level(logging.WARNING, logger="kiln.backends"):
        mod, _ = load(tmp_path, nonce)
    used = os.path.dirname(mod.__file__)
    assert used != str(d) and not list(d.glob("kiln_*.py"))
    st = os.lstat(used)
    assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700  # a fresh mkdtemp folder
    assert run_kernel(mod)[3].item() == 7.0
    return " ".join(r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="chown to another uid needs root")
def test_folder_of_another_user_is_refused(tmp_path, caplog):
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 12345, 12345)
    msg = refused(tmp_path, caplog, d, "owner")
    assert str(d) in msg and "uid 12345" in msg


def test_world_writable_folder_is_refused(tmp_path, caplog):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    msg = refused(tmp_path, caplog, d, "mode")
    assert str(d) in msg and "777" in msg


def test_symlinked_folder_is_refused(tmp_path, caplog):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    msg = refused(tmp_path, caplog, link, "symlink")
    assert "symbolic link" in msg and not list(real.glob("kiln_*.py"))
