"""Calibration methods: from an observer's histogram of |x| to the clipping range ``amax`` of a tensor.

- ``minmax``: the largest magnitude seen (TensorRT's IInt8MinMaxCalibrator). No clipping.
- ``entropy``: the threshold whose 128-level quantization loses the least information, measured as the
  KL divergence between the clipped reference distribution P (outliers folded into its last bin) and its
  quantized form Q, over candidate thresholds from bin 128 up (Migacz, "8-bit Inference with TensorRT",
  GTC 2017: the method of TensorRT's IInt8EntropyCalibrator). Q keeps P's empty bins empty, so a
  candidate whose last bin is empty but has outliers folded in diverges infinitely: with sparse far
  outliers this method keeps the full range.
- ``entropy2``: the same search over the histogram without exact zeros (which every scale represents
  exactly; ReLU outputs are half zeros, and that spike would otherwise pull the threshold down), with P and Q smoothed (empty bins get a small mass, taken evenly from the
  others) before the divergence is taken, as MXNet and ONNX Runtime do; this keeps a candidate whose
  clipped outliers land in an empty bin comparable instead of infinitely bad, and picks the right edge
  of the chosen bin. TensorRT does not publish EntropyCalibrator2's exact algorithm; this is Kiln's.
- ``percentile[:P]``: the P-th percentile of |x| (default 99.99), as TensorRT's legacy calibrator and
  pytorch-quantization do.
"""
from __future__ import annotations

import numpy as np

from .observers import NUM_BINS, HistogramObserver

METHODS = ("minmax", "entropy", "entropy2", "percentile")
LEVELS = 128  # magnitudes 0..127 of a symmetric int8


def parse_method(method: str) -> tuple[str, float | None]:
    """"percentile:99.9" -> ("percentile", 99.9); others have no parameter."""
    name, _, arg = method.lower().partition(":")
    if name not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)} "
                         f"(percentile takes an optional ':P', e.g. 'percentile:99.99')")
    if name == "percentile":
        p = float(arg) if arg else 99.99
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {p}")
        return name, p
    return name, None


def needs_histogram(method: str) -> bool:
    return parse_method(method)[0] != "minmax"


def compute_amax(obs: HistogramObserver, method: str) -> float:
    name, arg = parse_method(method)
    if obs.amax == 0.0 or name == "minmax" or obs.counts is None:
        return float(obs.amax)
    hist = obs.counts
    if name == "entropy2" and obs.zeros:
        hist = hist.copy()
        hist[0] -= obs.zeros
    counts, width = _rebin(hist, obs.width)
    if name == "percentile":
        return _percentile(counts, width, arg)
    return _entropy(counts, width, smooth=(name == "entropy2"))


def _rebin(counts: np.ndarray, width: float) -> tuple[np.ndarray, float]:
    """Merge adjacent bins so that at most NUM_BINS remain (the search is quadratic in bins)."""
    factor = -(-len(counts) // NUM_BINS)
    if factor <= 1:
        return counts.astype(np.float64), width
    pad = (-len(counts)) % factor
    c = np.concatenate([counts, np.zeros(pad, dtype=counts.dtype)]).reshape(-1, factor).sum(1)
    return c.astype(np.float64), width * factor


def _percentile(counts: np.ndarray, width: float, p: float) -> float:
    cdf = np.cumsum(counts)
    i = int(np.searchsorted(cdf, cdf[-1] * p / 100.0))
    return float(min(i + 1, len(counts)) * width)


def _quantized(ref: np.ndarray, i: int) -> np.ndarray:
    """Q: the first i bins merged into LEVELS groups, each group's mass spread over its non-empty bins."""
    group = (np.arange(i) * LEVELS) // i
    nonzero = ref != 0
    mass = np.bincount(group, weights=ref, minlength=LEVELS)
    nz = np.bincount(group, weights=nonzero.astype(np.float64), minlength=LEVELS)
    per = np.divide(mass, nz, out=np.zeros_like(mass), where=nz > 0)
    return np.where(nonzero, per[group], 0.0)


def _smooth(d: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    zero = d == 0
    nz = int((~zero).sum())
    if nz == 0:
        return None
    n_zero = d.size - nz
    take = eps * n_zero / nz
    out = d.astype(np.float64).copy()
    out[zero] = eps
    out[~zero] -= take
    return out if (out[~zero] > 0).all() else None


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    ps, qs = p.sum(), q.sum()
    if ps <= 0 or qs <= 0:
        return float("inf")
    p, q = p / ps, q / qs
    m = p > 0
    if (q[m] <= 0).any():
        return float("inf")
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def _entropy(counts: np.ndarray, width: float, smooth: bool) -> float:
    n = len(counts)
    if n <= LEVELS:
        return float(n * width)
    total_tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # total_tail[i] = sum(counts[i:])
    best, best_i = float("inf"), n
    for i in range(LEVELS, n + 1):
        ref = counts[:i].copy()
        q = _quantized(ref, i)
        ref[i - 1] += total_tail[i]
        if smooth:
            ps, qs = _smooth(ref), _smooth(q)
            if ps is None or qs is None:
                continue
            d = _kl(ps, qs)
        else:
            d = _kl(ref, q)
        if d < best:
            best, best_i = d, i
    return float((best_i if smooth else best_i - 0.5) * width)
