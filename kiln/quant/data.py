"""Calibration and validation data: every supported source becomes an iterator of {input name: array}.

Sources:
- a folder (str or Path) of ``.npz`` files (one batch each, arrays keyed by input name) and/or ``.npy``
  files (single-input models: one batch each; ``NAME.*.npy`` / ``NAME__*.npy`` name their input);
- a Python iterable of dicts (input name -> array) or of lists/tuples in input order, or single arrays
  for single-input models;
- a calibrator object with ``get_batch(names)``, TensorRT style: it returns None when done, else a list
  (input order) or dict of arrays, or of host/device addresses (ints; shapes then come from ``shapes``,
  the batch dim from ``get_batch_size()``), as TensorRT's IInt8Calibrator does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch


def iter_batches(source: Any, names: list[str], shapes: Mapping[str, tuple] | None = None,
                 dtypes: Mapping[str, Any] | None = None, limit: int | None = None,
                 device: str = "cpu") -> Iterator[dict[str, Any]]:
    """Yield input dicts from ``source`` (see the module doc), at most ``limit`` of them.

    Addresses from a calibrator are read on ``device`` (device pointers on CUDA, as in TensorRT)."""
    it = _batches(source, names, shapes or {}, dtypes or {}, device)
    for i, b in enumerate(it):
        if limit is not None and i >= limit:
            return
        yield b


def _batches(source, names, shapes, dtypes, device):
    if source is None:
        return iter(())
    if isinstance(source, (str, Path)):
        return _folder(Path(source), names)
    if hasattr(source, "get_batch"):
        return _calibrator(source, names, shapes, dtypes, device)
    if isinstance(source, Mapping):
        return iter([_as_dict(source, names)])
    if isinstance(source, Iterable):
        return (_as_dict(b, names) for b in source)
    raise TypeError(f"calibration data must be a folder, an iterable of input dicts or a calibrator with "
                    f"get_batch(); got {type(source).__name__}")


def _as_dict(batch, names) -> dict[str, Any]:
    if isinstance(batch, Mapping):
        missing = [n for n in names if n not in batch]
        if missing:
            raise ValueError(f"calibration batch lacks input(s) {missing}; it has {list(batch)}")
        return {n: batch[n] for n in names}
    if isinstance(batch, (np.ndarray, torch.Tensor)):
        if len(names) != 1:
            raise ValueError(f"a bare array batch needs a single-input model; inputs are {names}")
        return {names[0]: batch}
    batch = list(batch)
    if len(batch) != len(names):
        raise ValueError(f"calibration batch has {len(batch)} arrays, the model has {len(names)} inputs {names}")
    return dict(zip(names, batch))


def _folder(path: Path, names) -> Iterator[dict[str, Any]]:
    if not path.is_dir():
        raise FileNotFoundError(f"calibration data folder {str(path)!r} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
    if not files:
        raise FileNotFoundError(f"calibration data folder {str(path)!r} holds no .npz or .npy files")
    npy: dict[str, list[Path]] = {}
    for f in files:
        if f.suffix == ".npz":
            with np.load(f) as z:
                yield _as_dict({k: z[k] for k in z.files} if len(z.files) > 1 or z.files[0] in names
                               else {names[0]: z[z.files[0]]}, names)
        else:
            stem = f.stem
            owner = next((n for n in names if stem == n or stem.startswith(n + ".") or stem.startswith(n + "__")),
                         None)
            npy.setdefault(owner or "", []).append(f)
    if npy:
        if list(npy) == [""]:
            if len(names) != 1:
                raise ValueError(f"{str(path)!r}: .npy files must be named after the input for a model with "
                                 f"inputs {names} (e.g. {names[0]}.0.npy), or use .npz files")
            for f in npy[""]:
                yield {names[0]: np.load(f)}
            return
        lists = [npy.get(n, []) for n in names]
        if len({len(x) for x in lists}) != 1:
            raise ValueError(f"{str(path)!r}: inputs have different numbers of .npy files")
        for group in zip(*lists):
            yield {n: np.load(f) for n, f in zip(names, group)}


def _calibrator(cal, names, shapes, dtypes, device) -> Iterator[dict[str, Any]]:
    while True:
        batch = cal.get_batch(list(names))
        if batch is None or (isinstance(batch, (list, tuple)) and len(batch) == 0):
            return
        items = batch if isinstance(batch, Mapping) else dict(zip(names, batch))
        out = {}
        for n in names:
            x = items[n]
            if isinstance(x, (int, np.integer)):
                x = _from_address(int(x), n, cal, shapes, dtypes, device)
            out[n] = x
        yield out


def _from_address(ptr: int, name: str, cal, shapes, dtypes, device: str) -> torch.Tensor:
    from ..ir.dtype import DType
    from ..engine.buffers import wrap_address
    shape = list(shapes.get(name) or ())
    if not shape or any(not isinstance(d, int) for d in shape[1:]):
        raise ValueError(f"calibrator returned an address for input {name!r} whose shape is not known at build "
                         f"time ({shape}); give a profile or return arrays")
    if hasattr(cal, "get_batch_size"):
        shape[0] = int(cal.get_batch_size())
    dtype = dtypes.get(name) or DType.FLOAT
    return wrap_address(ptr, tuple(shape), dtype, torch.device(device)).clone()
