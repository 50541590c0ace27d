"""A small CNN trained on scikit-learn's bundled digits (8x8 images, 10 classes) in a few seconds, and
exported to ONNX: the trained model the INT8 tests measure accuracy on. Nothing is downloaded."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


def load_digits_split(seed: int = 0):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # [n, 1, 8, 8] in [0, 1]
    x = (x - 0.3) / 0.4
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.7 * len(x))
    return x[idx[:cut]], y[idx[:cut]], x[idx[cut:]], y[idx[cut:]]


def train_digits(path: Path, epochs: int = 12, seed: int = 0):
    """Train, export to ``path``; return (train x, test x, test y)."""
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = load_digits_split(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    g = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is several times faster than contended ones
    try:
        _fit(model, opt, xt, yt, g, epochs)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(xte[:4]),), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
    return xtr, xte, yte


def _fit(model, opt, xt, yt, g, epochs):
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()


def batches(x: np.ndarray, size: int, count: int | None = None) -> list[dict]:
    out = [{"x": x[i:i + size]} for i in range(0, len(x), size)]
    return out[:count] if count else out


def accuracy(engine, x: np.ndarray, y: np.ndarray) -> float:
    ctx = engine.create_execution_context()
    pred = np.concatenate([ctx.infer(b)["logits"].argmax(1) for b in batches(x, 256)])
    return float((pred == y).mean() * 100)
