"""Run a graph on calibration data and turn what the observers saw into a Calibration.

``run_graph`` executes a Graph (at any point of the build) with a hook that sees every value as it is
computed; ``calibrate`` observes the named values over all batches and computes their ranges.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from ..ir.convert import numpy_to_torch
from ..ir.graph import Graph
from .cache import Calibration
from .calibrators import compute_amax, needs_histogram
from .observers import HistogramObserver


def copy_graph(graph: Graph) -> Graph:
    """An independent copy (nodes, values, constants, node meta)."""
    from ..engine.graph_json import decode_graph, encode_graph
    plan, tensors = encode_graph(graph)
    g = decode_graph(plan, tensors)
    g.meta = dict(graph.meta)
    return g


def _to_torch(x: Any, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    t, _ = numpy_to_torch(np.asarray(x))
    return t.to(device)


def run_graph(graph: Graph, batches: Iterable[Mapping[str, Any]], device: str = "cpu", registry=None,
              hook: Callable | None = None, env_box: dict | None = None) -> list[list[torch.Tensor]]:
    """Outputs of ``graph`` for each batch; ``hook(value_id, tensor)`` sees every computed value (and
    ``env_box["env"]``, if a dict is given, the whole environment of value id -> tensor at that moment)."""
    from ..engine.program import Program
    from ..ops import default_registry
    dev = torch.device(device)
    registry = registry or default_registry()
    from ..engine.binding import bind_constants
    consts = bind_constants(graph, dev)  # as the engine binds them: shape constants stay on the host on a GPU
    prog = Program(graph, dev, registry, consts)
    step_hook = None
    if hook is not None:
        def step_hook(step, env):
            if env_box is not None:
                env_box["env"] = env
            for vid in step.outputs:
                if vid is not None and vid in env:
                    hook(vid, env[vid])
    results = []
    with torch.inference_mode():
        for b in batches:
            env = {v.id: _to_torch(b[v.name], dev) for v in graph.inputs}
            if hook is not None:
                for v in graph.inputs:
                    hook(v.id, env[v.id])
            outs = prog.run(env, step_hook)
            results.append([o.float().cpu() if isinstance(o, torch.Tensor) and o.dtype.is_floating_point else o
                            for o in outs])
    return results


def calibrate(graph: Graph, batches: Iterable[Mapping[str, Any]], names: Iterable[str], method: str = "entropy2",
              device: str = "cpu", registry=None, multipliers: dict[str, torch.Tensor] | None = None) -> Calibration:
    """Observe the values called ``names`` in ``graph`` over ``batches``; return their int8 scales.

    ``multipliers``: name -> per-channel factor (last axis) applied before observing (SmoothQuant's 1/s)."""
    by_name = {v.name: v for v in graph.values()}
    wanted = {by_name[n].id: n for n in names if n in by_name}
    hist = needs_histogram(method)
    observers = {n: HistogramObserver(histogram=hist) for n in wanted.values()}
    multipliers = multipliers or {}

    def hook(vid, t):
        n = wanted.get(vid)
        if n is not None:
            m = multipliers.get(n)
            observers[n].observe(t if m is None else t.float() * m.to(t.device))

    run_graph(graph, batches, device, registry, hook)
    amax = {n: compute_amax(o, method) for n, o in observers.items() if o.batches}
    return Calibration.from_amax(amax, method)


def channel_ranges(graph: Graph, batches: Iterable[Mapping[str, Any]], names: Iterable[str], device: str = "cpu",
                   registry=None) -> dict[str, torch.Tensor]:
    """The largest |x| per channel (last axis) of each named value over ``batches``."""
    by_name = {v.name: v for v in graph.values()}
    wanted = {by_name[n].id: n for n in names if n in by_name}
    out: dict[str, torch.Tensor] = {}

    def hook(vid, t):
        n = wanted.get(vid)
        if n is not None and isinstance(t, torch.Tensor) and t.dtype.is_floating_point and t.dim() >= 1:
            m = t.detach().abs().float().reshape(-1, t.shape[-1]).amax(0).cpu()
            out[n] = m if n not in out else torch.maximum(out[n], m)

    run_graph(graph, batches, device, registry, hook)
    return out
