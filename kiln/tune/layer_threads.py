"""Which CPU layers run on one thread: measured at build, stored as ``node.meta["threads"] = 1``.

Torch runs every CPU layer on all its intra-op threads. For a small layer (a squeeze-excitation 1x1
convolution, a pooling of a few thousand values, a depthwise convolution on a small map) waking the pool's
sleeping threads and splitting the work costs more than it saves: on the 2-core development VM every layer of
a MobileNetV3 classifier ran 1.0-2.2x slower on two threads than on one, while the 3x3 convolutions of a
ResNet ran 1.6x faster on two. onnxruntime makes the same decision per operator from a cost estimate; Kiln
measures it, like its other tactic choices: the engine's layers are timed at the profile's opt shapes on one
thread and on the build's thread count, alternating, and a layer keeps one thread when that is clearly
faster (``GAIN``); the marks stay only if the whole model then runs faster too (``WHOLE_GAIN``: a document
layout detector lost 8% with 31 of its 141 layers marked, each of them faster alone). Every layer on one thread
is the other whole-model candidate, kept when it beats both. The engine's program
sets one thread around those layers only (kiln/engine/program.py ``with_threads``).

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
OWN_GAIN = 0.8  # a one-thread layer runs its op's own kernel when that is at most 80% of its tactic's time there
WHOLE_GAIN = 0.97  # and the marks are kept only when the whole model runs at least 3% faster with them
ROUNDS = 5  # timed runs per setting, alternating (after one warm-up run each)
# The choice runs the whole model up to 3 * (ROUNDS + 1) times on one thread and as many on all (layers timed
# both ways, the own kernels, three whole-model settings); it is skipped where that would take over BUDGET_S.
# What one thread can save is about the pool's wake-up per layer (tens of microseconds), under 1% of a run that
# long; an int8 ResNet-50 at batch 16 spent 100 of its 111 s CPU build here (2026-12-07).
BUDGET_S = 20.0


class Skipped(Exception):
    """The choice was not made; the message says why (the build report keeps it)."""


def choose_layer_threads(graph, binding, registry, feeds: list[dict]) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """Time every layer of ``graph`` (with its ``binding``'s constants and tactics: kiln/engine/binding.py) on one
    thread and on the current thread count; marks the layers one thread serves better (``meta["threads"] = 1``).
    The tuner chose each layer's tactic on all threads; on one thread the op's own kernel can be the faster one
    (on a MobileNetV3 classifier, oneDNN's 1x1-convolution-as-GEMM tactic took 2x torch's convolution on one
    thread), so for the marked layers that run a tactic the own kernel is timed on one thread too, and replaces
    the tactic where it is clearly faster (``OWN_GAIN``): the binding, the choices and ``meta["tactic"]`` (what the
    file keeps) say TORCH then. Returns ({label: (one-thread ms, many-thread ms)} of the marked layers,
    {label: (own kernel ms, tactic ms) on one thread} of the layers switched). Nothing on a GPU, with one thread,
    or without inputs to run; nothing is kept unless the whole model runs faster (``WHOLE_GAIN``)."""
    threads = torch.get_num_threads()
    if binding.device.type != "cpu" or threads <= 1 or not feeds:
        return {}, {}
    from ..engine.program import Program
    program = Program(graph, binding.device, registry, binding.constants, binding.tactics)
    ids = {v.name: v.id for v in graph.inputs}
    feed = {ids[k]: v for k, v in feeds[0].items() if k in ids}
    estimate = _cost_s(program, feed, threads)
    if estimate > BUDGET_S:
        raise Skipped(f"timing it would take about {estimate:.0f} s (budget {BUDGET_S:.0f} s): the model's runs "
                      f"are long enough that one thread could save under 1% of them")
    samples = _layer_ms(program, feed, (1, threads))
    medians = [(step.node, statistics.median(samples[1][i]), statistics.median(samples[threads][i]))
               for i, step in enumerate(program.steps)]
    every = {node: (round(one, 4), round(many, 4)) for node, one, many in medians}
    chosen = {node: every[node] for node, one, many in medians if one <= GAIN * many}
    switched = _own_kernels_faster(graph, binding, registry, feed, program, samples[1], chosen) if chosen else {}
    tactics = {n: t for n, t in binding.tactics.items() if n not in switched}
    # Layer by layer is not the whole story (a layer's threads wake for the next one, the arena, the cache):
    # marks are kept only when the whole model, run as the engine runs it, is faster with them. The second
    # candidate puts every layer on one thread: on the 2-core VM a MobileNetV3 classifier ran 22% faster so
    # (8.2 vs 10.5 ms) although few of its layers were clearly faster alone, because every layer on two threads
    # pays for waking the pool's sleeping thread in sequence, which a layer timed by itself hides.
    plain = _whole_ms(program, feed)
    best, best_ms, tried = {}, plain, []
    for candidate in ([chosen] if chosen else []) + [every]:
        for node in candidate:
            node.meta["threads"] = 1
        ms = _whole_ms(Program(graph, binding.device, registry, binding.constants, tactics), feed)
        tried.append(ms)
        for node in candidate:
            node.meta.pop("threads", None)
        if ms <= WHOLE_GAIN * plain and ms < best_ms:
            best, best_ms = candidate, ms
    if not best:
        log.info("per-layer threads not kept: the whole model took %s ms with one thread for %s, %.3f ms without",
                 " / ".join(f"{ms:.3f}" for ms in tried), "the marked layers / every layer" if chosen
                 else "every layer", plain)
        return {}, {}
    for node in best:
        node.meta["threads"] = 1
    from ..tactics import TORCH
    for node in switched:
        binding.tactics.pop(node, None)
        binding.choices[node.label] = TORCH
        node.meta["tactic"] = TORCH.to_json()
    log.info("%d of %d layers run on one thread, %d of them on their op's own kernel (measured faster than %d "
             "threads; whole model %.3f -> %.3f ms)", len(best), len(program.steps), len(switched), threads, plain,
             best_ms)
    return ({node.label: times for node, times in best.items()},
            {node.label: times for node, times in switched.items()})


def _cost_s(program, feed: dict, threads: int) -> float:
    """Seconds the choice would take: one run on ``threads`` and one on one thread timed after an untimed warm-up
    (first-call costs: oneDNN primitive creation, weight reorders), each times the runs the choice makes."""
    runs = 3 * (ROUNDS + 1)
    spent = {}
    try:
        for n in (threads, threads, 1):
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            with torch.inference_mode():
                program.run(dict(feed))
            spent[n] = time.perf_counter() - t0  # the warm-up's entry is overwritten by the timed run
    finally:
        torch.set_num_threads(threads)
    return runs * (spent[1] + spent[threads])


def _layer_ms(program, feed: dict, thread_counts: tuple) -> dict[int, list[list[float]]]:
    """{thread count: per step, its times in ms}: ``ROUNDS`` runs of ``program`` per thread count, alternating,
    after one warm-up run each (first-call costs: oneDNN primitive creation, allocations)."""
    threads = torch.get_num_threads()
    samples: dict[int, list[list[float]]] = {n: [[] for _ in program.steps] for n in thread_counts}
    try:
        for round_ in range(ROUNDS + 1):
            for n in thread_counts:
                torch.set_num_threads(n)
                marks: list[float] = []
                t0 = time.perf_counter()
                with torch.inference_mode():
                    program.run(dict(feed), hook=lambda step, env: marks.append(time.perf_counter()))
                if round_ == 0:
                    continue
                for i, (a, b) in enumerate(zip([t0] + marks, marks)):
                    samples[n][i].append((b - a) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return samples


def _own_kernels_faster(graph, binding, registry, feed: dict, program, tactic_one_ms: list, chosen: dict) -> dict:
    """{node: (own kernel ms, tactic ms)} on one thread, for the ``chosen`` layers that run a tactic and whose op's
    own kernel is at most ``OWN_GAIN`` of the tactic's time there."""
    from ..engine.program import Program
    candidates = {n for n in chosen if n in binding.tactics}
    if not candidates:
        return {}
    own = Program(graph, binding.device, registry, binding.constants,
                  {n: t for n, t in binding.tactics.items() if n not in candidates})
    own_one_ms = _layer_ms(own, feed, (1,))[1]
    out = {}
    for i, step in enumerate(own.steps):
        if step.node in candidates:
            mine, theirs = statistics.median(own_one_ms[i]), statistics.median(tactic_one_ms[i])
            if mine <= OWN_GAIN * theirs:
                out[step.node] = (round(mine, 4), round(theirs, 4))
    return out


def _whole_ms(program, feed: dict) -> float:
    """The median of ``ROUNDS`` whole runs of ``program`` (after one warm-up), as the engine runs it."""
    times = []
    for round_ in range(ROUNDS + 1):
        t0 = time.perf_counter()
        with torch.inference_mode():
            program.run(dict(feed))
        if round_:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
