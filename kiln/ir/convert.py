"""numpy <-> torch conversion that keeps the ONNX element type, including the types numpy holds via
ml_dtypes (bfloat16, float8, int4, float4) and the ones torch stores widened."""
from __future__ import annotations

import numpy as np
import torch

from .dtype import DType

# ml_dtypes types whose bits torch can reinterpret directly: (numpy bit-carrier, torch dtype)
_BITCAST = {
    DType.BFLOAT16: (np.uint16, torch.bfloat16),
    DType.FLOAT8E4M3FN: (np.uint8, torch.float8_e4m3fn),
    DType.FLOAT8E4M3FNUZ: (np.uint8, torch.float8_e4m3fnuz),
    DType.FLOAT8E5M2: (np.uint8, torch.float8_e5m2),
    DType.FLOAT8E5M2FNUZ: (np.uint8, torch.float8_e5m2fnuz),
}
_UNSIGNED_VIA = {np.dtype(np.uint16): torch.uint16, np.dtype(np.uint32): torch.uint32,
                 np.dtype(np.uint64): torch.uint64}


def _ml_dtype(dtype: DType):
    import ml_dtypes
    return {
        DType.BFLOAT16: ml_dtypes.bfloat16, DType.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn,
        DType.FLOAT8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz, DType.FLOAT8E5M2: ml_dtypes.float8_e5m2,
        DType.FLOAT8E5M2FNUZ: ml_dtypes.float8_e5m2fnuz, DType.INT4: ml_dtypes.int4, DType.UINT4: ml_dtypes.uint4,
        DType.INT2: getattr(ml_dtypes, "int2", None), DType.UINT2: getattr(ml_dtypes, "uint2", None),
        DType.FLOAT4E2M1: ml_dtypes.float4_e2m1fn, DType.FLOAT8E8M0: ml_dtypes.float8_e8m0fnu,
    }[dtype]


def _contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping the shape (np.ascontiguousarray turns a 0-d array into shape (1,))."""
    return np.ascontiguousarray(array).reshape(array.shape)


def numpy_to_torch(array: np.ndarray) -> tuple[torch.Tensor, DType]:
    """A torch tensor holding ``array`` in Kiln's storage for its element type, and that type."""
    array = np.asarray(array)
    if not array.dtype.isnative:  # big-endian data (read from a file or another machine): torch needs native
        array = array.astype(array.dtype.newbyteorder("="))
    dtype = DType.from_numpy(array.dtype)
    if dtype is DType.STRING:
        raise TypeError("string tensors are not supported")
    if dtype in _BITCAST:
        carrier, tdt = _BITCAST[dtype]
        return torch.from_numpy(_contiguous(array).view(carrier).copy()).view(tdt), dtype
    if dtype is DType.FLOAT8E8M0:
        return torch.from_numpy(_contiguous(array).view(np.uint8).copy()).view(dtype.torch), dtype
    if dtype.is_subbyte:
        wide = np.float32 if dtype is DType.FLOAT4E2M1 else (np.int8 if dtype in (DType.INT4, DType.INT2) else np.uint8)
        return torch.from_numpy(array.astype(wide)), dtype
    if array.dtype in _UNSIGNED_VIA:
        signed = array.view(np.dtype(array.dtype.str.replace("u", "i")))
        return torch.from_numpy(_contiguous(signed).copy()).view(_UNSIGNED_VIA[array.dtype]), dtype
    return torch.from_numpy(_contiguous(array).copy()), dtype


def torch_to_numpy(tensor: torch.Tensor, dtype: DType | None = None) -> np.ndarray:
    """The numpy array for ``tensor``; ``dtype`` (the IR's element type) picks ml_dtypes types for
    values stored widened (int4, float4, ...)."""
    plain = _PLAIN_TORCH.get(tensor.dtype)
    if plain is not None and tensor.device.type == "cpu" and (dtype is None or dtype is plain):
        # The common case in one step (a run's float32 output, say): same bits, no ml_dtypes type.
        return tensor.detach().contiguous().numpy()
    t = tensor.detach().to("cpu").contiguous()
    if dtype is None or not isinstance(dtype, DType):
        dtype = DType.from_torch(t.dtype) if t.dtype in _TORCH_TO_DTYPE else None
    if dtype in _BITCAST:
        carrier, tdt = _BITCAST[dtype]
        bits = t.to(tdt).view(torch.uint16 if carrier is np.uint16 else torch.uint8)
        return _unsigned_numpy(bits).view(_ml_dtype(dtype))
    if dtype is DType.FLOAT8E8M0:
        if t.dtype == DType.FLOAT8E8M0.torch:
            return t.view(torch.uint8).numpy().view(_ml_dtype(dtype))
        return t.to(torch.float32).numpy().astype(_ml_dtype(dtype))
    if dtype is not None and dtype.is_subbyte:
        return t.numpy().astype(_ml_dtype(dtype))
    return _unsigned_numpy(t)


def _unsigned_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype in (torch.uint16, torch.uint32, torch.uint64):
        signed = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}[t.dtype]
        npu = {torch.uint16: np.uint16, torch.uint32: np.uint32, torch.uint64: np.uint64}[t.dtype]
        return t.view(signed).numpy().view(npu)
    return t.numpy()


_TORCH_TO_DTYPE = {torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16,
                   torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.bool,
                   torch.complex64, torch.complex128, torch.float8_e4m3fn, torch.float8_e4m3fnuz,
                   torch.float8_e5m2, torch.float8_e5m2fnuz}

# torch dtypes whose numpy array is the same type (no reinterpretation, no ml_dtypes), with their DType.
_PLAIN_TORCH = {torch.float32: DType.FLOAT, torch.float64: DType.DOUBLE, torch.float16: DType.FLOAT16,
                torch.int8: DType.INT8, torch.int16: DType.INT16, torch.int32: DType.INT32, torch.int64: DType.INT64,
                torch.uint8: DType.UINT8, torch.bool: DType.BOOL}
