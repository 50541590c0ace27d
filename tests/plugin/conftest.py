"""The plugin tests run Triton kernels on the CPU through TRITON_INTERPRET=1 (Triton's own switch), set before
triton is imported (as tests/backends does); a build offers them on the CPU only when its tactic library says so
(``DEFAULT.with_triton_on_cpu()``). The user-style plugin module (softclip_plugin.py) is imported by name from
this folder, which pytest puts on sys.path for the tests here."""
import os

os.environ["TRITON_INTERPRET"] = "1"
