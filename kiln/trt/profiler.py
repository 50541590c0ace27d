"""TensorRT's IProfiler: ``context.profiler = MyProfiler()``, whose ``report_layer_time(layer_name, ms)`` is
called for every engine layer after each execute.

A profiled execute runs the engine's program step by step with a hook, as ``kiln layerprof``
(kiln/cli/layerprof.py) does: on the CPU the gap between hook calls is the layer's time; on CUDA an event is
recorded per layer and read after one synchronize. Such a run uses torch's allocator and no CUDA graph, so it is
slower than an unprofiled one, as TensorRT's profiled runs are. Layer names are the engine's layer names (those
of the build report and EngineInspector).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..engine.buffers import check_output_shape


class IProfiler:
    """Subclass and implement report_layer_time."""

    def report_layer_time(self, layer_name: str, ms: float) -> None:  # pragma: no cover - interface
        """Receive the time of layer ``layer_name`` in the run that just finished, in milliseconds."""
        raise NotImplementedError


def run_profiled(engine, feed: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 profiler: IProfiler, debug=None) -> dict[str, torch.Tensor]:
    """Run ``engine`` on ``feed`` into ``buffers`` (output name -> tensor), reporting each layer's time; every
    output by name (those without a buffer as computed). ``debug``: called after the run with the debug tensors'
    values, as ``ExecutionContext.infer``'s."""
    program = engine.program
    on_cuda = engine.device.type == "cuda"
    marks: list = []
    if on_cuda:
        first = torch.cuda.Event(enable_timing=True)
        first.record()

        def hook(step, env):
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            marks.append(e)
    else:
        first = time.perf_counter()

        def hook(step, env):
            marks.append(time.perf_counter())
    env = {v.id: feed[v.name] for v in program.graph.inputs}
    with torch.inference_mode():
        outs = program.run(env, hook=hook)
        result = {}
        for info, x in zip(engine.outputs, outs):
            result[info.name] = x
            if info.name in buffers:
                check_output_shape(info.name, buffers[info.name], tuple(x.shape))
                buffers[info.name].copy_(x)
    if on_cuda:
        torch.cuda.synchronize(engine.device)
        times = [a.elapsed_time(b) for a, b in zip([first] + marks[:-1], marks)]
    else:
        times = [(b - a) * 1000 for a, b in zip([first] + marks[:-1], marks)]
    for step, ms in zip(program.steps, times):
        profiler.report_layer_time(step.node.label, float(np.float32(ms)))
    if debug is not None and engine.debug_tensors:
        debug(engine.debug_values(outs))
    return result
