"""Ops of the 'signal' family: DFT, STFT, the Hann/Hamming/Blackman windows and MelWeightMatrix.

ONNX holds complex signals as a trailing axis of size 2 (real, imaginary) and real ones as a trailing
axis of size 1; the kernels convert to torch complex tensors, use torch.fft, and convert back.
"""
from __future__ import annotations

import math

import torch

from ..ir.dtype import DType
from .registry import KernelContext, OpSet

ops = OpSet("signal")


def _scalar(t) -> int | float:
    return t.reshape(-1)[0].item() if isinstance(t, torch.Tensor) else t


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Transforms run in float64 whatever the input: a float32 FFT's rounding noise (~1e-7 of the
    signal's magnitude) shows in near-zero outputs, and signal ops are rarely the hot path."""
    return torch.float64


def _to_complex(x: torch.Tensor) -> torch.Tensor:
    """(..., 1) real or (..., 2) complex ONNX layout -> complex tensor of shape (...)."""
    x = x.to(_work_dtype(x.dtype))
    if x.shape[-1] == 1:
        return torch.complex(x[..., 0], torch.zeros_like(x[..., 0]))
    return torch.view_as_complex(x.contiguous())


def _from_complex(z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.view_as_real(z).to(dtype)


@ops.op("DFT", host_inputs=(1, 2))
def dft(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    """Discrete Fourier transform along one axis; onesided keeps the non-redundant half of a real input's
    spectrum, and inverse+onesided rebuilds a real signal from such a half."""
    x = inputs[0]
    length = inputs[1] if len(inputs) > 1 else None
    if ctx.opset >= 20:
        axis = int(_scalar(inputs[2])) if len(inputs) > 2 and inputs[2] is not None else -2
    else:
        axis = int(attrs.get("axis", 1))
    inverse, onesided = bool(attrs.get("inverse", 0)), bool(attrs.get("onesided", 0))
    axis = axis % x.dim()
    if axis == x.dim() - 1:
        raise ValueError("DFT: axis cannot be the last (real/imaginary) axis")
    n = int(_scalar(length)) if length is not None else None
    z = _to_complex(x)
    if inverse and onesided:
        n = n if n is not None else 2 * (x.shape[axis] - 1)
        return torch.fft.irfft(z, n=n, dim=axis).unsqueeze(-1).to(x.dtype)
    z = torch.fft.ifft(z, n=n, dim=axis) if inverse else torch.fft.fft(z, n=n, dim=axis)
    if onesided:
        z = z.narrow(axis, 0, z.shape[axis] // 2 + 1)
    return _from_complex(z, x.dtype)


@ops.op("STFT", host_inputs=(1, 3))
def stft(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    """Short-time Fourier transform of (batch, length, 1|2) signals -> (batch, frames, bins, 2)."""
    signal, step = inputs[0], int(_scalar(inputs[1]))
    window = inputs[2] if len(inputs) > 2 else None
    frame_len = inputs[3] if len(inputs) > 3 else None
    onesided = bool(attrs.get("onesided", 1))
    if frame_len is not None:
        frame_len = int(_scalar(frame_len))
    elif window is not None:
        frame_len = window.shape[0]
    else:
        frame_len = signal.shape[1]
    z = _to_complex(signal)  # (B, L)
    frames = z.unfold(1, frame_len, step)  # (B, frames, frame_len)
    if window is not None:
        frames = frames * window.to(frames.real.dtype)
    spec = torch.fft.fft(frames, dim=-1)
    if onesided:
        spec = spec[..., : frame_len // 2 + 1]
    return _from_complex(spec, signal.dtype)


def _window(ctx: KernelContext, inputs: list, attrs: dict, terms: tuple[float, ...]) -> torch.Tensor:
    """Generalized cosine window sum_k (-1)^k a_k cos(2 pi k n / N), periodic (N = size) or symmetric (N = size-1)."""
    size = int(_scalar(inputs[0]))
    dtype = DType(int(attrs.get("output_datatype", DType.FLOAT))).torch
    periodic = bool(attrs.get("periodic", 1))
    device = ctx.device  # the size may be a host value on a GPU engine; the window is device data
    n = torch.arange(size, dtype=torch.float64, device=device)
    denom = size if periodic else size - 1
    w = torch.zeros_like(n)
    for k, a in enumerate(terms):
        w = w + ((-1) ** k) * a * torch.cos(2 * math.pi * k * n / denom)
    return w.to(dtype)


@ops.op("HannWindow")
def hann_window(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    return _window(ctx, inputs, attrs, (0.5, 0.5))


@ops.op("HammingWindow")
def hamming_window(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    return _window(ctx, inputs, attrs, (25 / 46, 21 / 46))


@ops.op("BlackmanWindow")
def blackman_window(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    return _window(ctx, inputs, attrs, (0.42, 0.5, 0.08))


@ops.op("MelWeightMatrix")
def mel_weight_matrix(ctx: KernelContext, inputs: list, attrs: dict) -> torch.Tensor:
    """Triangular filters mapping the dft_length//2+1 linear frequency bins onto num_mel_bins mel bands."""
    num_mel, dft_len, rate = (int(_scalar(t)) for t in inputs[:3])
    low_hz, high_hz = (float(_scalar(t)) for t in inputs[3:5])
    dtype = DType(int(attrs.get("output_datatype", DType.FLOAT))).torch
    device = ctx.device
    num_bins = dft_len // 2 + 1

    def to_mel(hz: float) -> float:
        return 2595 * math.log1p(hz / 700) / math.log(10)

    low_mel, high_mel = to_mel(low_hz), to_mel(high_hz)
    # Band edges: num_mel + 2 points evenly spaced in mel, mapped back to Hz and then to bin indices.
    step = (high_mel - low_mel) / (num_mel + 2)
    mel = torch.arange(num_mel + 2, dtype=torch.float64, device=device) * step + low_mel
    hz = 700 * torch.expm1(mel / 2595 * math.log(10))
    edges = torch.div((dft_len + 1) * hz, rate, rounding_mode="floor").to(torch.int64)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]  # (num_mel,) each

    j = torch.arange(num_bins, device=device).unsqueeze(1)  # (bins, 1)
    rise = (j - lo).double() / (mid - lo).clamp(min=1).double()
    fall = (hi - j).double() / (hi - mid).clamp(min=1).double()
    out = torch.zeros(num_bins, num_mel, dtype=torch.float64, device=device)
    out = torch.where((j >= lo) & (j <= mid), torch.where(mid > lo, rise, (j == mid).double()), out)
    out = torch.where((j >= mid) & (j < hi), fall, out)
    return out.to(dtype)
