"""The benchmark loop shared by `kiln bench` and `kiln exec`: N execution contexts, one thread each,
warm-up, then inferences until both the iteration count and the duration are reached.

On CUDA each phase is timed with CUDA events on the context's stream (H2D copy, compute, D2H copy);
enqueue time is the host time for ``infer_async`` to return. On CPU there is no transfer (zero cost) and
the work is done inside ``infer_async``, so enqueue and compute time are the same measurement.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from .timing import DEFAULT_PERCENTILES, Record, Summary


@dataclass(frozen=True)
class BenchSettings:
    streams: int = 1
    warmup_ms: float = 200.0
    iterations: int = 10
    duration_s: float = 3.0
    cuda_graphs: bool | None = None  # None: the engine's setting
    transfers: bool = True
    spin_wait: bool = False
    sleep_ms: float = 0.0
    percentiles: tuple = DEFAULT_PERCENTILES


def measure(engine, inputs: dict[str, np.ndarray], s: BenchSettings) -> Summary:
    import torch
    contexts = [engine.create_execution_context() for _ in range(max(1, s.streams))]
    for c in contexts:
        if s.cuda_graphs is not None:
            c.use_cuda_graphs = bool(s.cuda_graphs) and c.device.type == "cuda"
    on_cuda = engine.device.type == "cuda"
    host = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
    if on_cuda:
        host = {k: v.pin_memory() for k, v in host.items()}
    runner = _CudaRunner if on_cuda else _CpuRunner
    runners = [runner(c, host, s, i) for i, c in enumerate(contexts)]

    state = {"count": 0, "t0": 0.0}
    lock = threading.Lock()
    start = threading.Barrier(len(runners) + 1)
    errors: list[BaseException] = []

    def done() -> bool:
        with lock:
            return state["count"] >= s.iterations and time.perf_counter() - state["t0"] >= s.duration_s

    def worker(r):
        try:
            t_end = time.perf_counter() + s.warmup_ms / 1000
            r.once(0.0)  # at least one warm-up run: lazy initialization, CUDA graph capture
            while time.perf_counter() < t_end:
                r.once(0.0)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)
        start.wait()
        if errors:
            return
        try:
            while not done():
                rec = r.once(state["t0"])
                with lock:
                    r.records.append(rec)
                    state["count"] += 1
                if s.sleep_ms:
                    time.sleep(s.sleep_ms / 1000)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(r,), daemon=True) for r in runners]
    for t in threads:
        t.start()
    state["t0"] = time.perf_counter()  # set before releasing the workers; they only read it afterwards
    start.wait()
    state["t0"] = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - state["t0"]
    if errors:
        raise errors[0]
    records = sorted((rec for r in runners for rec in r.records), key=lambda rec: rec.start_ms)
    return Summary(records, wall, str(engine.device), s.percentiles, s.transfers)


class _CpuRunner:
    def __init__(self, ctx, host, s: BenchSettings, index: int):
        self.ctx, self.feed, self.s, self.index = ctx, host, s, index
        self.records: list[Record] = []

    def once(self, t0: float) -> Record:
        a = time.perf_counter()
        handle = self.ctx.infer_async(self.feed)
        b = time.perf_counter()
        handle.wait()
        c = time.perf_counter()
        ms = (b - a) * 1000
        return Record(self.index, (a - t0) * 1000, ms, 0.0, ms, 0.0, (c - a) * 1000)


class _CudaRunner:
    def __init__(self, ctx, host, s: BenchSettings, index: int):
        import torch
        self.torch = torch
        self.ctx, self.host, self.s, self.index = ctx, host, s, index
        self.records: list[Record] = []
        # Device-side input buffers, filled by the timed H2D copy (or once, with --no-transfers).
        self.dev = {k: v.to(ctx.device) for k, v in host.items()}
        self.out_host: dict | None = None
        self.ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]

    def _wait(self, ev) -> None:
        if self.s.spin_wait:  # busy-poll: lower wake-up jitter than a blocking sync, at the cost of a CPU core
            while not ev.query():
                pass
        else:
            ev.synchronize()

    def once(self, t0: float) -> Record:
        torch, stream, ev = self.torch, self.ctx.stream, self.ev
        a = time.perf_counter()
        with torch.cuda.stream(stream):
            ev[0].record(stream)
            if self.s.transfers:
                for k, v in self.host.items():
                    self.dev[k].copy_(v, non_blocking=True)
            ev[1].record(stream)
        # infer_async makes the context's stream wait on the current stream: run it from the same stream.
        with torch.cuda.stream(stream):
            e0 = time.perf_counter()
            handle = self.ctx.infer_async(self.dev)
            e1 = time.perf_counter()
            ev[2].record(stream)
            # The outputs already exist (enqueued, not finished): copy them on the same stream, no sync.
            outs = handle._result if isinstance(handle._result, dict) else {}
            if self.s.transfers:
                if self.out_host is None:
                    self.out_host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                                     for k, v in outs.items() if isinstance(v, torch.Tensor)}
                for k, buf in self.out_host.items():
                    buf.copy_(outs[k], non_blocking=True)
            ev[3].record(stream)
        self._wait(ev[3])
        h2d, comp, d2h = ev[0].elapsed_time(ev[1]), ev[1].elapsed_time(ev[2]), ev[2].elapsed_time(ev[3])
        return Record(self.index, (a - t0) * 1000, (e1 - e0) * 1000, h2d, comp, d2h, ev[0].elapsed_time(ev[3]))
