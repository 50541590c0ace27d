"""Observers: what calibration records about one tensor while data flows through the float model.

A ``HistogramObserver`` keeps the largest magnitude seen and a histogram of |x| whose bins keep one
width: when a batch brings a larger magnitude, bins are appended (the old counts stay where they
were), so one pass over the data suffices and the result does not depend on batch order beyond the
first batch's bin width (as in NVIDIA's pytorch-quantization HistogramCalibrator).
"""
from __future__ import annotations

import math

import numpy as np
import torch

NUM_BINS = 2048


class HistogramObserver:
    def __init__(self, num_bins: int = NUM_BINS, histogram: bool = True):
        self.num_bins = num_bins
        self.histogram = histogram
        self.amax = 0.0
        self.counts: np.ndarray | None = None
        self.width = 0.0
        self.batches = 0
        self.zeros = 0  # exact zeros (ReLU outputs, padding) are also counted in bin 0

    def observe(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.numel() == 0:
            return
        a = x.detach().abs().float().reshape(-1)
        a = a[torch.isfinite(a)]
        if a.numel() == 0:
            return
        m = float(a.max())
        self.batches += 1
        self.amax = max(self.amax, m)
        if not self.histogram:
            return
        if self.counts is None:
            self.width = (m if m > 0 else 1.0) / self.num_bins
            self.counts = np.zeros(self.num_bins, dtype=np.int64)
        needed = max(1, math.ceil(m / self.width))
        if needed > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(needed - len(self.counts), dtype=np.int64)])
        nb = len(self.counts)
        self.zeros += int((a == 0).sum())
        idx = torch.clamp((a / self.width).long(), max=nb - 1)
        self.counts += torch.bincount(idx, minlength=nb).cpu().numpy()

    def edges(self) -> np.ndarray:
        return np.arange(len(self.counts) + 1, dtype=np.float64) * self.width

    def merge(self, other: "HistogramObserver") -> None:
        """Add another observer's data (used for observers of the same tensor in several runs)."""
        if other.counts is None:
            return
        if self.counts is None:
            self.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in other.__dict__.items()})
            return
        # Re-bin the other histogram's bin centres into ours.
        centres = (np.arange(len(other.counts)) + 0.5) * other.width
        need = max(len(self.counts), math.ceil(centres.max() / self.width) if len(centres) else 0)
        if need > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(need - len(self.counts), dtype=np.int64)])
        idx = np.minimum((centres / self.width).astype(np.int64), len(self.counts) - 1)
        np.add.at(self.counts, idx, other.counts)
        self.amax = max(self.amax, other.amax)
        self.batches += other.batches
        self.zeros += other.zeros
