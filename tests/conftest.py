import functools
import os
import sys
from pathlib import Path

import pytest

# tests/conformance and tests/ops hold helper modules imported by plain name.
for sub in ("conformance", "ops"):
    sys.path.insert(0, str(Path(__file__).parent / sub))

# The Triton interpreter tests (tests/backends, tests/plugin) set TRITON_INTERPRET=1 when imported, process-wide:
# on a GPU machine every test collected after them then ran its Triton kernels in the interpreter and failed (an
# H100 run of tests/gpu with tests/backends beside it). There they are left out, and the summary says so; run
# them alone with TRITON_INTERPRET=1 set.
_INTERPRETER_LINE = 'os.environ["TRITON_INTERPRET"] = "1"'
_LEFT_OUT: list[str] = []


@functools.cache  # asked once per collected path: torch's CUDA check once per session
def _gpu_run() -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    import torch
    return torch.cuda.is_available()


def _sets_interpreter(path: Path) -> bool:
    target = path / "conftest.py" if path.is_dir() else path
    if target.suffix != ".py" or not target.is_file():
        return False
    return _INTERPRETER_LINE in target.read_text(errors="replace")


def pytest_ignore_collect(collection_path, config):
    """Leave out the interpreter tests on a GPU machine (see above)."""
    path = Path(collection_path)
    if _gpu_run() and _sets_interpreter(path):  # (no file is read on a machine without a GPU)
        _LEFT_OUT.append(str(path))
        return True
    return None


def pytest_terminal_summary(terminalreporter):
    if _LEFT_OUT:
        terminalreporter.write_line(f"left out on this GPU machine (they set TRITON_INTERPRET=1 for the whole process; "
                                    f"run them alone with TRITON_INTERPRET=1): {', '.join(sorted(_LEFT_OUT))}")


@pytest.fixture
def count_timings(monkeypatch):
    """Counts every candidate timing the tuner makes (Timer.__call__)."""
    from kiln.tune import tuner
    calls = []
    real = tuner.Timer.__call__

    def counted(self, fn, device):
        calls.append(1)
        return real(self, fn, device)
    monkeypatch.setattr(tuner.Timer, "__call__", counted)
    return calls
