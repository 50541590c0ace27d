"""On a GPU machine the Triton interpreter tests are left out of a mixed run (tests/conftest.py): they set
TRITON_INTERPRET=1 for the whole process, which turned the GPU tests collected after them into failures."""
import importlib.util
from pathlib import Path

TESTS = Path(__file__).parent
# tests/conftest.py by its path ("import conftest" gets whichever conftest was imported first)
_spec = importlib.util.spec_from_file_location("kiln_tests_root_conftest", TESTS / "conftest.py")
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)


def test_interpreter_modules_and_folders_are_recognized():
    assert conftest._sets_interpreter(TESTS / "backends" / "test_triton_nbits.py")
    assert conftest._sets_interpreter(TESTS / "plugin")  # its conftest sets it for the folder
    assert not conftest._sets_interpreter(TESTS / "gpu")
    assert not conftest._sets_interpreter(TESTS / "gpu" / "test_gpu.py")


def test_left_out_only_on_a_gpu_machine(monkeypatch):
    monkeypatch.setattr(conftest, "_LEFT_OUT", [])
    monkeypatch.setattr(conftest, "_gpu_run", lambda: False)
    assert conftest.pytest_ignore_collect(TESTS / "plugin", None) is None
    monkeypatch.setattr(conftest, "_gpu_run", lambda: True)
    assert conftest.pytest_ignore_collect(TESTS / "plugin", None) is True
    assert conftest.pytest_ignore_collect(TESTS / "gpu", None) is None
    assert conftest._LEFT_OUT == [str(TESTS / "plugin")]
