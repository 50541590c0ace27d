"""`--plugin MODULE` on the CLI: the module is imported by name and its PluginLibrary used to build, run and
load; an engine with a plugin is refused, naming it, when the module is not given."""
import os
import subprocess
import sys
from pathlib import Path

import onnx

from test_plugin import softclip_model

HERE = Path(__file__).parent


def kiln(*args, cwd):
    env = dict(os.environ, CI="1", PYTHONWARNINGS="ignore", TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent.parent), str(HERE)]))
    return subprocess.run([sys.executable, "-m", "kiln", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_build_run_with_plugin_module(tmp_path):
    onnx.save(softclip_model(), tmp_path / "m.onnx")
    p = kiln("build", "m.onnx", "-o", "m.engine", "--plugin", "softclip_plugin", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = kiln("run", "m.engine", cwd=tmp_path)
    assert p.returncode == 1 and "my.domain::SoftClip version 1 is not registered" in p.stderr, p.stderr
    p = kiln("run", "m.engine", "--plugin", "softclip_plugin", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = kiln("exec", "--loadEngine=m.engine", "--plugins=softclip_plugin", "--iterations=2", "--duration=0",
             "--warmUp=0", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


def test_unknown_plugin_module_is_a_clear_error(tmp_path):
    onnx.save(softclip_model(), tmp_path / "m.onnx")
    p = kiln("build", "m.onnx", "-o", "m.engine", "--plugin", "no_such_plugin_module", cwd=tmp_path)
    assert p.returncode == 1 and "plugin module 'no_such_plugin_module' could not be imported" in p.stderr, p.stderr
    p = kiln("build", "m.onnx", "-o", "m.engine", "--plugin", "json", cwd=tmp_path)
    assert p.returncode == 1 and "defines no kiln.plugin.PluginLibrary" in p.stderr, p.stderr
