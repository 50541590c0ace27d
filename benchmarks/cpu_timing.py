"""What the CPU benchmarks share: a block of calls timed as one, and the error against a reference run."""
from __future__ import annotations

import time

import numpy as np


def block_ms(fn, seconds: float) -> float:
    """Mean ms per call of ``fn`` called back to back for at least ``seconds`` (one block)."""
    n, t0 = 0, time.perf_counter()
    end = t0 + seconds
    while True:
        fn()
        n += 1
        t = time.perf_counter()
        if t >= end:
            return (t - t0) * 1e3 / n


def max_rel_error(got: list, want: list) -> float:
    """Largest |got - want| of the float outputs, relative to each reference output's range (at least 1e-3)."""
    worst = 0.0
    for g, w in zip(got, want):
        if not np.issubdtype(w.dtype, np.floating):
            continue
        scale = max(float(np.abs(w).max()), 1e-3)
        worst = max(worst, float(np.abs(np.asarray(g, np.float64) - w).max()) / scale)
    return worst
