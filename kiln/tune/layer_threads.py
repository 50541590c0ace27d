"""Which CPU layers run on one thread: measured at build, stored as ``node.meta["threads"] = 1``.

Torch runs every CPU layer on all its intra-op threads. For a small layer (a squeeze-excitation 1x1
convolution, a pooling of a few thousand values, a depthwise convolution on a small map) waking the pool's
sleeping threads and splitting the work costs more than it saves: on the 2-core development VM every layer of
a MobileNetV3 classifier ran 1.0-2.2x slower on two threads than on one, while the 3x3 convolutions of a
ResNet ran 1.6x faster on two. onnxruntime makes the same decision per operator from a cost estimate; Kiln
measures it, like its other tactic choices: the engine's layers are timed at the profile's opt shapes on one
thread and on the build's thread count, alternating, and a layer keeps one thread when that is clearly
faster (``GAIN``). The engine's program then sets one thread around those layers only
(kiln/engine/program.py ``with_threads``).

Like any timing, the choice reflects the machine at build time; ``BuilderConfig(layer_threads=False)`` skips
it and every layer uses the run's own thread setting.
"""
from __future__ import annotations

import logging
import statistics
import time

import torch

log = logging.getLogger("kiln.tune")

GAIN = 0.8  # one thread is chosen only when its median is at most 80% of the many-thread median
ROUNDS = 5  # timed runs per setting, alternating (after one warm-up run each)


def choose_layer_threads(graph, binding, registry, feeds: list[dict]) -> dict[str, tuple]:
    """Time every layer of ``graph`` (with its ``binding``'s constants and tactics: kiln/engine/binding.py) on one
    thread and on the current thread count; returns {layer label: (one-thread ms, many-thread ms)} for the
    layers one thread serves better, and marks those nodes (``meta["threads"] = 1``). Nothing on a GPU, with
    one thread, or without inputs to run."""
    threads = torch.get_num_threads()
    if binding.device.type != "cpu" or threads <= 1 or not feeds:
        return {}
    from ..engine.program import Program
    program = Program(graph, binding.device, registry, binding.constants, binding.tactics)
    ids = {v.name: v.id for v in graph.inputs}
    feed = {ids[k]: v for k, v in feeds[0].items() if k in ids}
    samples: dict[int, list[list[float]]] = {1: [[] for _ in program.steps], threads: [[] for _ in program.steps]}
    try:
        for round_ in range(ROUNDS + 1):
            for n in (1, threads):
                torch.set_num_threads(n)
                marks: list[float] = []
                t0 = time.perf_counter()
                with torch.inference_mode():
                    program.run(dict(feed), hook=lambda step, env: marks.append(time.perf_counter()))
                if round_ == 0:
                    continue  # warm-up: first-call costs (oneDNN primitive creation, allocations)
                for i, (a, b) in enumerate(zip([t0] + marks, marks)):
                    samples[n][i].append((b - a) * 1e3)
    finally:
        torch.set_num_threads(threads)
    chosen = {}
    for i, step in enumerate(program.steps):
        one, many = statistics.median(samples[1][i]), statistics.median(samples[threads][i])
        if one <= GAIN * many:
            step.node.meta["threads"] = 1
            chosen[step.node.label] = (round(one, 4), round(many, 4))
    log.info("%d of %d layers run on one thread (measured faster than %d threads)", len(chosen),
             len(program.steps), threads)
    return chosen
