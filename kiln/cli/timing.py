"""Latency statistics and trtexec's performance summary, with its warnings.

All times are in milliseconds. A ``Record`` is one inference: when it started (relative to the start of
measurement), its enqueue time (host), host-to-device copy, compute, device-to-host copy, and end-to-end
latency.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_PERCENTILES = (90.0, 95.0, 99.0)
METRICS = (  # (record field, label in the summary)
    ("latency_ms", "Latency"),
    ("enqueue_ms", "Enqueue Time"),
    ("h2d_ms", "H2D Latency"),
    ("compute_ms", "Compute Time"),
    ("d2h_ms", "D2H Latency"),
)


@dataclass
class Record:
    context: int
    start_ms: float
    enqueue_ms: float
    h2d_ms: float
    compute_ms: float
    d2h_ms: float
    latency_ms: float


@dataclass
class Stats:
    min: float
    max: float
    mean: float
    median: float
    stdev: float
    percentiles: dict[float, float]

    @property
    def cv(self) -> float:
        """Coefficient of variation (stdev / mean); 0 for a zero mean."""
        return self.stdev / self.mean if self.mean > 0 else 0.0


def stats(values, percentiles=DEFAULT_PERCENTILES) -> Stats:
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        return Stats(0.0, 0.0, 0.0, 0.0, 0.0, {p: 0.0 for p in percentiles})
    # "linear" interpolation as numpy's default; trtexec picks the nearest rank, the difference is tiny.
    return Stats(float(a.min()), float(a.max()), float(a.mean()), float(np.median(a)),
                 float(a.std(ddof=1)) if a.size > 1 else 0.0,
                 {p: float(np.percentile(a, p)) for p in percentiles})


def fmt_stats(s: Stats) -> str:
    pct = ", ".join(f"percentile({p:g}%) = {v:.5g} ms" for p, v in s.percentiles.items())
    return (f"min = {s.min:.5g} ms, max = {s.max:.5g} ms, mean = {s.mean:.5g} ms, median = {s.median:.5g} ms, "
            f"{pct}")


@dataclass
class Summary:
    records: list[Record]
    wall_s: float  # measured window, all contexts together
    device: str
    percentiles: tuple = DEFAULT_PERCENTILES
    transfers: bool = True

    @property
    def throughput(self) -> float:
        return len(self.records) / self.wall_s if self.wall_s > 0 else 0.0

    def stats(self, field: str) -> Stats:
        return stats((getattr(r, field) for r in self.records), self.percentiles)

    def lines(self) -> list[str]:
        on_cpu = not self.device.startswith("cuda")
        out = ["=== Performance summary ===", f"Throughput: {self.throughput:.5g} qps"]
        for field, label in METRICS:
            if field in ("h2d_ms", "d2h_ms") and (on_cpu or not self.transfers):
                why = "zero-cost on CPU" if on_cpu else "--no-transfers"
                out.append(f"{label}: 0 ms ({why})")
                continue
            name = "GPU Compute Time" if field == "compute_ms" and not on_cpu else label
            out.append(f"{name}: {fmt_stats(self.stats(field))}")
        total_compute = sum(r.compute_ms for r in self.records) / 1000
        out.append(f"Total Host Walltime: {self.wall_s:.5g} s")
        out.append(f"Total {'GPU ' if not on_cpu else ''}Compute Time: {total_compute:.5g} s")
        out.append(f"Inferences: {len(self.records)} on {len({r.context for r in self.records})} context(s)")
        return out

    def warnings(self) -> list[str]:
        """trtexec's hints: enqueue-bound, transfer-bound, unstable timings (CV > 10%)."""
        w = []
        if not self.records:
            return ["no inference was measured: raise --iterations or --duration"]
        enq, comp = self.stats("enqueue_ms"), self.stats("compute_ms")
        on_cuda = self.device.startswith("cuda")
        if on_cuda and enq.median >= 0.8 * comp.median:
            w.append("Throughput may be bound by Enqueue Time rather than GPU Compute and the GPU may be "
                     "under-utilized. If not already in use, CUDA graphs (--cuda-graphs on / --useCudaGraph) "
                     "may increase throughput.")
        if on_cuda and self.transfers:
            xfer = self.stats("h2d_ms").median + self.stats("d2h_ms").median
            if xfer > comp.median:
                w.append("Throughput may be bound by host-to-device transfers for the inputs or device-to-host "
                         "transfers for the outputs rather than compute. Consider keeping data on the device "
                         "(--no-transfers / --noDataTransfers measures without them).")
        if comp.cv > 0.10:
            w.append(f"{'GPU ' if on_cuda else ''}compute time is unstable, with coefficient of variance = "
                     f"{comp.cv * 100:.3g}%. " + ("If not already in use, locking GPU clock frequency or adding "
                                                  "--spin-wait may improve the stability." if on_cuda else
                                                  "Other processes or CPU frequency scaling may be interfering; "
                                                  "measure longer (--duration) or on an idle machine."))
        return w

    def to_json(self) -> dict:
        def s(field):
            st = self.stats(field)
            return {"min": st.min, "max": st.max, "mean": st.mean, "median": st.median, "stdev": st.stdev,
                    "cv": st.cv, "percentiles": {f"{p:g}": v for p, v in st.percentiles.items()}}
        return {"device": self.device, "throughput_qps": self.throughput, "wall_s": self.wall_s,
                "inferences": len(self.records), "transfers": self.transfers,
                "stats": {f: s(f) for f, _ in METRICS}, "warnings": self.warnings(),
                "times": [asdict(r) for r in self.records]}


def export_times(summary: Summary, path: str) -> None:
    with open(path, "w") as f:
        json.dump(summary.to_json(), f, indent=1)


def group_averages(records: list[Record], n: int) -> list[tuple[float, float, float]]:
    """trtexec's --avgRuns: (compute, latency, enqueue) means over consecutive groups of ``n`` inferences."""
    out = []
    for i in range(0, len(records) - n + 1, n):
        g = records[i:i + n]
        out.append(tuple(statistics.fmean(getattr(r, f) for r in g)
                         for f in ("compute_ms", "latency_ms", "enqueue_ms")))
    return out
