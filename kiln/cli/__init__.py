"""The `kiln` command line: one module per subcommand, dispatched from main.py.

A subcommand is a module with ``add_parser(subparsers, common)`` and ``run(args) -> exit code``, named in
``main.SUBCOMMANDS``: build.py, run.py, bench.py, inspect.py, compare.py, exec.py (trtexec's flags),
quantize.py, serve.py, sign.py, verify.py. Shared by several: buildflags.py (the BuilderConfig flags),
inputs.py and shapes.py (run-time inputs), loading.py (an engine or an ONNX file built in memory), output.py
(text, ``--json``, ``--quiet``), progress.py, measure.py and timing.py (the benchmark loop and its summary),
layerprof.py (per-layer times), errors.py (the CLI's own error). docs/cli.md documents the commands."""
