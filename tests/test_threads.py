"""CPU threads (kiln/threads.py): the pool's wait policy chosen before torch loads, thread counts honoured."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.cli.main import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny_resnet.onnx"


def _python(code: str, **env_changes) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_changes, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip() + "\n" + proc.stderr


def test_kiln_asks_for_a_sleeping_pool_before_torch_loads():
    out = _python("import os, kiln; print(os.environ['OMP_WAIT_POLICY'], kiln.threads.WAIT_POLICY.chosen_by)")
    assert out.startswith("PASSIVE kiln")


@pytest.mark.parametrize("var,value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "1000")])
def test_a_users_choice_is_kept(var, value):
    out = _python("import os, kiln; print(os.environ.get('OMP_WAIT_POLICY', '-'), kiln.threads.WAIT_POLICY.chosen_by)",
                  **{var: value})
    assert out.startswith(("ACTIVE" if var == "OMP_WAIT_POLICY" else "-") + " user")


def test_torch_loaded_first_warns_once_at_a_cpu_context():
    code = ("import torch, kiln, os; e = kiln.build(%r); e.create_execution_context(); e.create_execution_context();"
            "print(os.environ.get('OMP_WAIT_POLICY', '-'), kiln.threads.WAIT_POLICY.chosen_by)" % str(EXAMPLE))
    out = _python(code)
    assert out.startswith("- nobody")
    assert out.count("torch was imported before kiln") == 1


def test_context_threads_are_set_before_its_runs():
    engine = kiln.build(str(EXAMPLE))
    before = torch.get_num_threads()
    try:
        ctx = engine.create_execution_context(threads=1)
        ctx.infer({"image": np.zeros((1, 3, 64, 64), np.float32)})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_thread_counts_are_input_errors(bad):
    engine = kiln.build(str(EXAMPLE))
    with pytest.raises(kiln.InputError, match="positive integer"):
        engine.create_execution_context(threads=bad)
    with pytest.raises(kiln.InputError, match="positive integer"):
        kiln.set_threads(bad)


def test_cli_threads_flag_is_honoured(capsys):
    before = torch.get_num_threads()
    try:
        assert cli_main(["bench", str(EXAMPLE), "--threads", "1", "--duration", "0", "--iterations", "2",
                         "--warmup", "0", "--shapes", "image:1x3x64x64"]) == 0
        assert torch.get_num_threads() == 1
        assert "threads: 1 intra-op threads" in capsys.readouterr().out
        assert cli_main(["run", str(EXAMPLE), "--threads", "0"]) == 1
        assert "positive integer" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_exec_takes_trtexecs_bare_flag_and_a_count():
    before = torch.get_num_threads()
    try:
        assert cli_main(["exec", f"--onnx={EXAMPLE}", "--threads", "--skipInference", "--shapes=image:1x3x64x64"]) == 0
        assert torch.get_num_threads() == before
        assert cli_main(["exec", f"--onnx={EXAMPLE}", "--threads=1", "--skipInference", "--shapes=image:1x3x64x64"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
