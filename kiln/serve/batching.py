"""Dynamic batching: one bounded queue per loaded model version, drained by one worker thread per execution
context. A worker takes the oldest request, then merges later requests of the same shape signature along
the batch dim (dim 0) until the batch holds max_batch_size rows, reaches a preferred batch size with nothing
more to take, or the oldest request has waited max_queue_delay; runs the engine once; splits the outputs back.

Only one worker collects at a time (``_collect_lock``): while it waits out the delay the others run the
batches they already have, so contexts stay busy and batches still fill. An ExecutionContext serves one
thread at a time, so each worker owns one.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import KernelError, KilnError, RequestTimeoutError, ServerBusyError
from .metrics import ModelMetrics

log = logging.getLogger("kiln.serve")


@dataclass(frozen=True)
class BatchPolicy:
    enabled: bool = False              # False: every request runs alone (Triton without dynamic_batching)
    max_batch_size: int = 1            # rows per engine call
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 256
    # Pad each engine call's rows up to the next of bucket_sizes() (GPU engines): every new batch size costs
    # a CUDA graph capture and its own activation layout, and merged batches take every size from 1 to the max.
    pad_to_buckets: bool = False

    def bucket_sizes(self) -> tuple[int, ...]:
        """The preferred batch sizes, the powers of two below max_batch_size, and max_batch_size itself."""
        powers = {1 << i for i in range(self.max_batch_size.bit_length()) if 1 << i < self.max_batch_size}
        sizes = powers | {self.max_batch_size} | {b for b in self.preferred_batch_sizes if b <= self.max_batch_size}
        return tuple(sorted(sizes))

    def padded_rows(self, rows: int) -> int:
        if not self.pad_to_buckets:
            return rows
        return next((b for b in self.bucket_sizes() if b >= rows), rows)


@dataclass(eq=False)
class Pending:
    """One request in the queue. ``key``: requests may be merged only when their keys are equal (same input
    names, dtypes and non-batch dims)."""
    inputs: dict[str, np.ndarray]
    rows: int
    key: tuple
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, label: str, contexts: list, policy: BatchPolicy, fits: Callable[[dict], bool],
                 metrics: ModelMetrics):
        """``contexts``: objects with ``infer(dict) -> dict`` (ExecutionContexts), one worker each;
        ``fits(shapes)``: whether merged input shapes lie within one of the engine's profiles."""
        self.label, self.policy, self._fits, self._metrics = label, policy, fits, metrics
        self._queue: deque[Pending] = deque()
        self._cond = threading.Condition()
        self._collect_lock = threading.Lock()
        self._closed = False
        self._workers = [threading.Thread(target=self._work, args=(ctx,), name=f"kiln-{label}-{i}", daemon=True)
                         for i, ctx in enumerate(contexts)]
        for w in self._workers:
            w.start()

    # -- the front ends' side -----------------------------------------------------------------------------
    def submit(self, inputs: dict[str, np.ndarray], rows: int, key: tuple) -> Future:
        """Queue a validated request; its Future resolves to {output name: array}. A full queue or a
        closing batcher raises ServerBusyError at once."""
        item = Pending(inputs, rows, key)
        with self._cond:
            if self._closed:
                raise ServerBusyError(f"model {self.label} is shutting down or unloading; not accepting requests")
            if len(self._queue) >= self.policy.max_queue_size:
                raise ServerBusyError(f"model {self.label}: the request queue is full ({self.policy.max_queue_size}"
                                      f" waiting; config.pbtxt dynamic_batching.default_queue_policy."
                                      f"max_queue_size); retry later")
            self._queue.append(item)
            self._metrics.queued()
            self._cond.notify()
        return item.future

    def close(self, drain: bool = True) -> None:
        """Stop accepting. With ``drain`` the workers answer everything queued first; without, queued requests
        fail with ServerBusyError. Returns when every worker has stopped."""
        with self._cond:
            self._closed = True
            if not drain:
                while self._queue:
                    item = self._queue.popleft()
                    self._metrics.dequeued_unrun()
                    if item.future.set_running_or_notify_cancel():
                        item.future.set_exception(ServerBusyError(f"model {self.label} was unloaded"))
            self._cond.notify_all()
        for w in self._workers:
            w.join()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def worker_count(self) -> int:
        return len(self._workers)

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    # -- the workers' side ------------------------------------------------------------------------------
    def _work(self, ctx) -> None:
        while True:
            with self._collect_lock:
                batch = self._collect()
            if batch is None:
                return
            self._run(ctx, batch)

    def _collect(self) -> list[Pending] | None:
        p = self.policy
        with self._cond:
            while True:
                first = self._pop_live()
                if first is not None:
                    break
                if self._closed:
                    return None
                self._cond.wait()
            batch, rows = [first], first.rows
            if not p.enabled:
                return batch
            flush_at = first.enqueued + p.max_queue_delay_s
            while rows < p.max_batch_size:
                rows = self._take_fitting(batch, rows)
                if rows >= p.max_batch_size or self._closed:
                    break
                if rows in p.preferred_batch_sizes:
                    break
                remaining = flush_at - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch

    def _pop_live(self) -> Pending | None:
        """The oldest queued request that nobody cancelled (a front end cancels one whose timeout passed)."""
        while self._queue:
            item = self._queue.popleft()
            if item.future.set_running_or_notify_cancel():
                return item
            self._metrics.dequeued_unrun()
        return None

    def _take_fitting(self, batch: list[Pending], rows: int) -> int:
        """Move queued requests that can join ``batch`` into it, oldest first; return the new row count."""
        keep: deque[Pending] = deque()
        key = batch[0].key
        while self._queue:
            item = self._queue.popleft()
            if item.future.cancelled():
                self._metrics.dequeued_unrun()
                continue
            if (item.key == key and rows + item.rows <= self.policy.max_batch_size
                    and self._fits(_merged_shapes(batch[0], rows + item.rows))):
                if item.future.set_running_or_notify_cancel():
                    batch.append(item)
                    rows += item.rows
                else:  # cancelled since the check above: gone for good (a second call would raise)
                    self._metrics.dequeued_unrun()
            else:
                keep.append(item)
        self._queue = keep
        return rows

    def _run(self, ctx, batch: list[Pending]) -> None:
        start = time.monotonic()
        queue_us = [int((start - item.enqueued) * 1e6) for item in batch]
        rows = sum(item.rows for item in batch)
        try:
            feed = batch[0].inputs if len(batch) == 1 else {
                name: np.concatenate([item.inputs[name] for item in batch]) for name in batch[0].inputs}
            padded = self.policy.padded_rows(rows)
            if padded > rows:  # copies of the last row: real data, so no NaN or overflow from made-up values
                outputs = ctx.infer({name: np.concatenate([a, np.repeat(a[-1:], padded - rows, axis=0)])
                                     for name, a in feed.items()})
                if all(out.ndim and out.shape[0] == padded for out in outputs.values()):
                    outputs = {name: out[:rows] for name, out in outputs.items()}
                else:  # an output that does not follow the batch (a dynamic dim 0 of another meaning): no padding
                    outputs = ctx.infer(feed)
            else:
                outputs = ctx.infer(feed)
            compute_us = int((time.monotonic() - start) * 1e6)
            parts = _split(outputs, batch, rows) if len(batch) > 1 else [outputs]
        except Exception as e:  # noqa: BLE001 - every request of the batch is answered, with the reason
            self._metrics.executed(rows, queue_us, int((time.monotonic() - start) * 1e6))
            if not isinstance(e, KilnError):
                log.exception("model %s: the engine failed on a batch of %d rows", self.label, rows)
                e = KernelError(f"model {self.label}: the engine failed: {type(e).__name__}: {e}")
            for item in batch:
                item.future.set_exception(e)
            return
        self._metrics.executed(rows, queue_us, compute_us)
        for item, part in zip(batch, parts):
            item.future.set_result(part)


def _merged_shapes(first: Pending, rows: int) -> dict[str, tuple]:
    return {name: (rows, *a.shape[1:]) for name, a in first.inputs.items()}


def _split(outputs: dict[str, np.ndarray], batch: list[Pending], rows: int) -> list[dict[str, np.ndarray]]:
    for name, out in outputs.items():
        if out.ndim == 0 or out.shape[0] != rows:
            raise KernelError(f"output {name!r} has shape {list(out.shape)}, not {rows} rows along dim 0: this "
                              f"model's outputs do not batch; set max_batch_size: 0 in its config.pbtxt")
    parts, start = [], 0
    for item in batch:
        parts.append({name: out[start:start + item.rows] for name, out in outputs.items()})
        start += item.rows
    return parts


def wait(future: Future, timeout_s: float | None, label: str) -> dict[str, np.ndarray]:
    """A request's outputs, for a thread-based front end (gRPC). If the timeout passes while the request is
    still queued it is withdrawn and RequestTimeoutError raised; once running, its answer is awaited."""
    try:
        return future.result(timeout_s)
    except TimeoutError:
        if future.cancel():
            raise RequestTimeoutError(f"model {label}: the request waited {timeout_s:.3f} s in the queue without "
                                      f"being run (its timeout)") from None
        return future.result()
    except CancelledError:
        raise RequestTimeoutError(f"model {label}: the request was withdrawn before it ran") from None
