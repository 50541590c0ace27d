"""Helpers of the CLI tests: `kiln` run as a subprocess, a tiny ONNX model made with onnx.helper. (A module of
its own name: ``from conftest import`` picks whichever conftest was imported first.)"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

KILN = [sys.executable, "-m", "kiln"]


def kiln(*args, cwd=None, env_extra=None, check=None):
    """Run `python -m kiln ARGS` (the same entry as the `kiln` script); return the CompletedProcess."""
    env = dict(os.environ, CI="1", PYTHONWARNINGS="ignore")
    env.update(env_extra or {})
    p = subprocess.run(KILN + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=180)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def make_tiny_model(path: Path) -> None:
    """Conv -> Relu -> Mul -> Add(residual) -> GlobalAveragePool -> Flatten, batch dim dynamic."""
    import onnx
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((4, 3, 3, 3)).astype("float32"), "w"),
             nh.from_array(rng.standard_normal(4).astype("float32"), "b"),
             nh.from_array(rng.standard_normal((1, 4, 1, 1)).astype("float32"), "s")]
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             h.make_node("Relu", ["c"], ["r"], name="relu"), h.make_node("Mul", ["r", "s"], ["m"], name="scale"),
             h.make_node("Add", ["m", "c"], ["a"], name="residual"),
             h.make_node("GlobalAveragePool", ["a"], ["g"], name="pool"),
             h.make_node("Flatten", ["g"], ["y"], name="flatten")]
    g = h.make_graph(nodes, "tiny", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
