"""Prometheus metrics under Triton's names, counted per model version, served by prometheus_client.

Triton's counters (nv_inference_request_success, nv_inference_count, nv_inference_queue_duration_us, ...) are
exposed with Triton's exact sample names, so dashboards and alerts written for Triton work unchanged.
prometheus_client would add ``_total`` to anything typed a counter, so these are exposed untyped (Prometheus
treats them alike; rate() works). Metrics Triton has no name for start with ``kiln_``. Each server owns its
own CollectorRegistry (no process-global state), passed to the metrics endpoint explicitly.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Triton's failure reasons: REJECTED (queue full, shutting down), CANCELED (timed out in the queue),
# BACKEND (the engine failed), OTHER (a request that could not be read or did not fit the model).
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

_COUNTERS = [  # (name, help, field of VersionStats)
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes", "success"),
    ("nv_inference_count", "Number of inferences performed (a batch of n counts n)", "inferences"),
    ("nv_inference_exec_count", "Number of model executions performed (a batch counts once)", "executions"),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds", "request_us"),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds", "queue_us"),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     "compute_us"),
    ("kiln_execution_duration_us", "Cumulative engine execution time in microseconds, once per batch", "busy_us"),
]


@dataclass
class VersionStats:
    """What happened to one model version's requests. Updated under the owning Metrics' lock."""
    success: int = 0
    inferences: int = 0
    executions: int = 0
    request_us: int = 0
    queue_us: int = 0
    compute_us: int = 0
    busy_us: int = 0            # engine time, once per execution (Triton's compute counts it per request)
    pending: int = 0
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batch_sizes: list[int] = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))
    batch_rows_sum: int = 0


class ModelMetrics:
    """The recording side for one model version (what the batcher and the front ends call)."""

    def __init__(self, lock: threading.Lock, stats: VersionStats):
        self._lock, self.stats = lock, stats

    def queued(self, n: int = 1) -> None:
        with self._lock:
            self.stats.pending += n

    def executed(self, rows: int, queue_us: list[int], compute_us: int) -> None:
        """One engine call over ``rows`` batch rows merged from ``len(queue_us)`` requests."""
        with self._lock:
            s = self.stats
            s.pending -= len(queue_us)
            s.executions += 1
            s.inferences += rows
            s.queue_us += sum(queue_us)
            s.compute_us += compute_us * len(queue_us)  # per request, as Triton counts it
            s.busy_us += compute_us
            s.batch_rows_sum += rows
            s.batch_sizes[next((i for i, b in enumerate(BATCH_BUCKETS) if rows <= b), len(BATCH_BUCKETS))] += 1

    def dequeued_unrun(self, n: int = 1) -> None:
        with self._lock:
            self.stats.pending -= n

    def succeeded(self, request_us: int) -> None:
        with self._lock:
            self.stats.success += 1
            self.stats.request_us += request_us

    def failed(self, reason: str, request_us: int = 0) -> None:
        with self._lock:
            self.stats.failures[reason] += 1
            self.stats.request_us += request_us


class Metrics:
    """All the server's numbers, and a prometheus_client registry that exposes them."""

    def __init__(self, gpu_memory=None):
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str], VersionStats] = {}
        self._gpu_memory = gpu_memory  # () -> [(gpu label, used bytes, total bytes)], or None without a GPU
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def for_model(self, name: str, version: str) -> ModelMetrics:
        with self._lock:
            stats = self._stats.setdefault((name, version), VersionStats())
        return ModelMetrics(self._lock, stats)

    def snapshot(self) -> dict[tuple[str, str], VersionStats]:
        import copy
        with self._lock:
            return copy.deepcopy(self._stats)

    # prometheus_client's Collector protocol
    def collect(self):
        stats = self.snapshot()
        for name, doc, attr in _COUNTERS:
            m = Metric(name, doc, "unknown")
            for (model, version), s in stats.items():
                m.add_sample(name, {"model": model, "version": version}, getattr(s, attr))
            yield m
        m = Metric("nv_inference_request_failure", "Number of failed inference requests, all batch sizes", "unknown")
        for (model, version), s in stats.items():
            for reason in FAILURE_REASONS:
                m.add_sample("nv_inference_request_failure",
                             {"model": model, "version": version, "reason": reason}, s.failures.get(reason, 0))
        yield m
        m = Metric("nv_inference_pending_request_count", "Instantaneous number of pending requests awaiting "
                   "execution per model", "gauge")
        for (model, version), s in stats.items():
            m.add_sample("nv_inference_pending_request_count", {"model": model, "version": version}, s.pending)
        yield m
        h = HistogramMetricFamily("kiln_batch_size", "Batch rows per engine execution (dynamic batching)",
                                  labels=["model", "version"])
        for (model, version), s in stats.items():
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, BATCH_BUCKETS), "+Inf"], s.batch_sizes):
                cumulative += count
                buckets.append((bound, cumulative))
            h.add_metric([model, version], buckets, s.batch_rows_sum)
        yield h
        if self._gpu_memory is not None:
            used = Metric("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "gauge")
            total = Metric("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "gauge")
            for gpu, used_b, total_b in self._gpu_memory():
                used.add_sample("nv_gpu_memory_used_bytes", {"gpu_uuid": gpu}, used_b)
                total.add_sample("nv_gpu_memory_total_bytes", {"gpu_uuid": gpu}, total_b)
            yield used
            yield total


def cuda_memory() -> list[tuple[str, int, int]]:
    """(device label, used, total) bytes of every visible GPU, from the CUDA driver via torch."""
    import torch
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        uuid = str(getattr(torch.cuda.get_device_properties(i), "uuid", "") or f"cuda:{i}")
        out.append((uuid, total - free, total))
    return out
