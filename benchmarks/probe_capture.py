"""Which layer breaks a model's CUDA-graph capture (GPU diagnosis, not a benchmark).

    python benchmarks/probe_capture.py --model silero_vad      # a model of the real-model set

Kiln captures each input shape's run into a CUDA graph and, where the capture fails, runs eagerly and says so
("CUDA graph capture failed ... operation failed due to a previous error during capture"). That message names
the operation that noticed, not the one that broke the capture. This script builds the model, wraps every
main-graph step's kernel, every If/Loop/Scan body node (``Interpreter._run_node``) and every host-to-device move
(``placement.to_device``), and records the first one after which the stream stops capturing, with its inputs'
devices; it also lists the synchronizing CUDA calls made during the first run (warm-up and capture), through
``torch.cuda.set_sync_debug_mode``, with the Python stack of each.
"""
from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import kiln  # noqa: E402
import torch  # noqa: E402
from kiln.engine import bodies, placement, program as program_module  # noqa: E402
from kiln.runtime.interpreter import Interpreter  # noqa: E402


def _devices(args) -> list:
    return [getattr(a, "device", type(a).__name__) for a in args]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="silero_vad", help="a model of tests/real_models/registry.py")
    ap.add_argument("--syncs", type=int, default=6, help="synchronizing calls to list")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("probe_capture needs a CUDA device")
    from real_models.registry import MODELS, fetch, make_inputs
    row = next(r for r in MODELS if r.name == args.model)
    path, feeds = str(fetch(row)), make_inputs(row, row.cases[0])
    profiles = (kiln.Profile.of(**row.profile),) if row.profile else ()
    engine = kiln.build(path, kiln.BuilderConfig(device="cuda", profiles=profiles))
    ctx = engine.create_execution_context()
    broke: list = []  # (what, detail) of each call after which the stream had stopped capturing
    capturing = torch.cuda.is_current_stream_capturing

    own_run_node = Interpreter._run_node

    def run_node(self, node, inputs, env):
        before = capturing()
        try:
            return own_run_node(self, node, inputs, env)
        finally:
            if before and not capturing():
                broke.append((f"body node {node.op_type} {node.label}", _devices(inputs), str(self.node_device(node))))
    Interpreter._run_node = run_node

    for step in ctx._snapshot().steps:
        def wrap(kernel=step.kernel, step=step):
            def run(c, inputs, attrs, **kw):
                before = capturing()
                out = kernel(c, inputs, attrs, **kw)
                if before and not capturing():
                    broke.append((f"step {step.node.op_type} {step.node.label}", _devices(inputs)))
                return out
            run.accepts_out = getattr(kernel, "accepts_out", ())
            return run
        step.kernel = wrap()

    own_to_device = placement.to_device

    def to_device(t, device, keep=None):
        before = capturing()
        out = own_to_device(t, device, keep)
        if before and not capturing():
            broke.append(("host-to-device move", tuple(t.shape), str(t.dtype), str(t.device)))
        return out
    for module in (placement, bodies, program_module):
        module.to_device = to_device

    syncs: list = []

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message) and len(syncs) < args.syncs:
            syncs.append((str(message)[:160], "".join(traceback.format_stack(limit=10)[:-1])))
    saved = warnings.showwarning
    warnings.showwarning = show
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            ctx.infer(feeds)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = saved
    print(f"{args.model}: context notes: {ctx.notes or 'none (captured)'}")
    print("calls after which the stream had stopped capturing (the first is the culprit):")
    for b in broke[:10] or [("none",)]:
        print("  ", *b)
    print("synchronizing CUDA calls in the first run (warm-up and capture):")
    for message, stack in syncs or [("none", "")]:
        print("----", message)
        print(stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
