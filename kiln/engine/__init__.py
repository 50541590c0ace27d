"""Engines: the file format and the runtime.

Everything needed to load and run an engine file lives here or below (kiln/ir, kiln/ops, kiln/runtime,
kiln/tactics): the file (format.py, validate*.py), what the engine reads of its header (spec.py, profile.py),
the plan (graph_json.py, binding.py: constants and tactics bound on a device, program.py), which values share
storage (aliases.py), the run (runtime.py, arena.py, memory.py) and the build report it carries (report.py).
An Engine is made one way, ``Engine(graph, header, report, ...)``, by ``Engine.load`` and by ``kiln.build``
(which lowers to a Plan first and hands over its binding, kiln/builder/lower.py). Nothing here imports the builder, the passes, the tuner or the quantizer
(tests/test_imports.py).
"""
from .runtime import Engine, ExecutionContext, InferHandle

__all__ = ["Engine", "ExecutionContext", "InferHandle"]
