"""The README's code runs as written on a CPU machine: every ```python block, in order, in one namespace (a
reader's session), and the `kiln` command lines of its ```bash blocks, in a folder holding the files they
name (model.onnx = the bundled example, a retrained copy, calibration batches, a signing key). Blocks that do
not run here are listed in NOT_RUN with the reason."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)

# first line of a block -> why it does not run in this test
NOT_RUN = {
    'pip install ".[serve]" -c constraints.txt': "installs the package (scripts/check_wheel.sh does it for a wheel)",
    "bash scripts/demo.sh": "the developer commands: CI runs them itself",
    'pip install -e ".[serve]" -c constraints.txt': "installs and starts a server (tests/serve covers kiln serve)",
}


def _first_line(code: str) -> str:
    return code.strip().splitlines()[0].split("#")[0].strip()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    model = onnx.load(str(ROOT / "examples" / "tiny_resnet.onnx"))
    onnx.save(model, d / "model.onnx")
    rng = np.random.default_rng(1)
    for init in model.graph.initializer:  # the same architecture with other weights
        a = numpy_helper.to_array(init)
        if a.dtype.kind == "f":
            init.CopyFrom(numpy_helper.from_array((a * rng.uniform(0.5, 1.5, a.shape)).astype(a.dtype), init.name))
    onnx.save(model, d / "retrained.onnx")
    (d / "calib").mkdir()
    for i in range(2):
        np.savez(d / "calib" / f"batch{i}.npz", image=rng.random((4, 3, 64, 64), dtype=np.float32))
    return d


def _kiln_env():
    return dict(os.environ, CI="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))


def test_every_block_is_run_or_says_why():
    firsts = [_first_line(code) for _, code in BLOCKS]
    assert set(NOT_RUN) <= set(firsts), f"NOT_RUN names blocks the README no longer has: {set(NOT_RUN) - set(firsts)}"
    assert any(lang == "python" for lang, _ in BLOCKS)


def test_python_blocks_run_in_order(folder, monkeypatch):
    monkeypatch.chdir(folder)
    namespace: dict = {"__name__": "readme"}
    for k, (lang, code) in enumerate(BLOCKS):
        if lang != "python" or _first_line(code) in NOT_RUN:
            continue
        try:
            exec(compile(code, f"README.md python block {k}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - say which block failed, with the block
            raise AssertionError(f"README python block {k} failed: {type(e).__name__}: {e}\n{code}") from e


def test_bash_blocks_kiln_lines_run(folder):
    subprocess.run([sys.executable, "-m", "kiln", "sign", "--generate-key", "signing.pem"], cwd=folder,
                   env=_kiln_env(), check=True, capture_output=True)
    onnx.save(onnx.load(str(folder / "model.onnx")), folder / "net.onnx")  # when this test runs alone
    shell = f'kiln() {{ "{sys.executable}" -m kiln "$@"; }}\nset -euo pipefail\n'
    for k, (lang, code) in enumerate(BLOCKS):
        if lang != "bash" or _first_line(code) in NOT_RUN:
            continue
        p = subprocess.run(["bash", "-c", shell + code], cwd=folder, env=_kiln_env(), capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, f"README bash block {k} failed (exit {p.returncode}):\n{code}\n{p.stderr[-2000:]}"
