"""Engines: the file format and the runtime.

Everything needed to load and run an engine file lives here or below (kiln/ir, kiln/ops, kiln/runtime,
kiln/tactics): the file (format.py, validate*.py), what the engine reads of its header (spec.py, profile.py),
the plan (graph_json.py, binding.py: constants and tactics bound on a device, program.py), which values share
storage (aliases.py), the run (runtime.py, arena.py, memory.py) and the build report it carries (report.py).
An Engine is made one way, ``Engine(graph, header, report, ...)``, by ``Engine.load`` and by ``kiln.build``
(which lowers to a Plan first and hands over its binding, kiln/builder/lower.py). Nothing here imports the
builder, the passes, the tuner or the quantizer (tests/test_imports.py).

- The file: ``format.py`` (layout, format version, pack/unpack), ``signing.py`` (Ed25519 trailer),
  ``bounded_json.py`` (JSON of bounded depth), ``validate.py`` (the header), ``validate_plan.py`` and
  ``validate_ops.py`` (the plan and its per-op rules), all reading through ``fields.py`` (typed reads whose
  errors name the field). A new header field is written by the builder (kiln/builder/builder.py, or
  ``Plan.header_fields``), checked in validate.py and read in spec.py or runtime.py.
- What was recorded at build: ``spec.py``, ``profile.py``, ``device_info.py`` (where it was built, checks at
  load), ``source.py`` (the model it was built from), ``precision_flags.py`` (float32 precision at launch).
- The run: ``binding.py``, ``placement.py`` (host placement of shape arithmetic), ``program.py``,
  ``runtime.py``, ``aliases.py``, ``arena.py``, ``memory.py``, ``buffers.py`` (caller output buffers),
  ``device_address.py`` (checks on raw device addresses).
"""
from .runtime import Engine, ExecutionContext, InferHandle

__all__ = ["Engine", "ExecutionContext", "InferHandle"]
