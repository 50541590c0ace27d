"""Run-time inputs for `run`, `bench`, `compare` and `exec`: loaded from .npy/.npz (or trtexec's raw
binary files), or random with a seed, at shapes from --shapes, the model, or its first profile."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CLIError
from .loading import check_readable
from .shapes import Shapes, check_names


def input_shapes(infos, profiles, shapes: Shapes | None, flag: str = "--shapes") -> Shapes:
    """A concrete shape per input: --shapes first, then the declared static shape, then profile 0's opt."""
    shapes = dict(shapes or {})
    check_names(shapes, [i.name for i in infos], flag)
    out = {}
    for info in infos:
        if info.name in shapes:
            out[info.name] = tuple(shapes[info.name])
        elif info.shape is not None and all(isinstance(d, int) for d in info.shape):
            out[info.name] = tuple(info.shape)
        elif profiles and info.name in profiles[0].opt:
            out[info.name] = tuple(profiles[0].opt[info.name])
        else:
            dims = "x".join("?" if not isinstance(d, int) else str(d) for d in info.shape)
            raise CLIError(f"input {info.name!r} has dynamic shape {dims}; give its shape with "
                           f"{flag} {info.name}:{dims.replace('?', 'N')}")
    return out


def random_inputs(infos, shapes: Shapes, seed: int) -> dict[str, np.ndarray]:
    """Uniform [-1, 1) for floats (as trtexec), small non-negative ints (safe as indices), random bools."""
    import torch
    from ..ir.convert import torch_to_numpy
    from ..ir.dtype import DType
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for info in infos:
        dtype = info.dtype or DType.FLOAT
        shape = shapes[info.name]
        if dtype is DType.BOOL:
            t = torch.randint(0, 2, shape, generator=gen).bool()
        elif dtype.is_float:
            t = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype.torch)
        elif dtype.is_int:
            t = torch.randint(0, 4, shape, generator=gen).to(dtype.torch)
        else:
            raise CLIError(f"cannot make random values for input {info.name!r} of type {dtype.name.lower()}; "
                           f"load it from a file")
        out[info.name] = torch_to_numpy(t, dtype)
    return out


def load_arrays(files: dict[str, str], npz: list[str], infos, shapes: Shapes) -> dict[str, np.ndarray]:
    """Arrays by input name from NAME:FILE entries (.npy, or raw bytes in the input's dtype) and .npz files."""
    known = [i.name for i in infos]
    out: dict[str, np.ndarray] = {}
    for path in npz:
        check_readable(path, "input file")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 - numpy raises several types for a bad file
            raise CLIError(f"cannot read input file {path!r} as .npz: {e}") from None
        check_names(arrays, known, f"inputs file {path!r}")
        out.update(arrays)
    for name, path in files.items():
        check_names({name: ()}, known, "--input")
        check_readable(path, "input file")
        out[name] = _load_one(path, next(i for i in infos if i.name == name), shapes)
    return out


def _load_one(path: str, info, shapes: Shapes) -> np.ndarray:
    if Path(path).suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise CLIError(f"cannot read {path!r} as .npy: {e}") from None
    # trtexec's --loadInputs files are raw bytes in the input's type, shaped by --shapes.
    import torch
    from ..ir.convert import torch_to_numpy
    from ..ir.dtype import DType
    dtype = info.dtype or DType.FLOAT
    shape = shapes.get(info.name)
    if shape is None:
        raise CLIError(f"raw input file {path!r} for {info.name!r} needs the input's shape: give --shapes")
    np_dtype = torch_to_numpy(torch.zeros(1, dtype=dtype.torch), dtype).dtype
    data = Path(path).read_bytes()
    want = int(np.prod(shape)) * np_dtype.itemsize
    if len(data) != want:
        raise CLIError(f"raw input file {path!r} has {len(data)} bytes; input {info.name!r} of shape "
                       f"{'x'.join(map(str, shape))} and type {dtype.name.lower()} needs {want}")
    return np.frombuffer(data, dtype=np_dtype).reshape(shape).copy()


def gather_inputs(infos, profiles, shapes: Shapes | None, files: dict[str, str], npz: list[str],
                  seed: int) -> dict[str, np.ndarray]:
    """Loaded inputs, with random values (from ``seed``) for the ones not loaded."""
    resolved_shapes = dict(shapes or {})
    loaded = load_arrays(files, npz, infos, resolved_shapes)
    for k, v in loaded.items():
        resolved_shapes.setdefault(k, tuple(v.shape))
    missing = [i for i in infos if i.name not in loaded]
    if missing:
        full = input_shapes(infos, profiles, resolved_shapes)
        loaded.update(random_inputs(missing, full, seed))
    return {i.name: loaded[i.name] for i in infos}
