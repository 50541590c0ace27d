"""The float32 precision an engine was built for, applied while its kernels are launched.

PyTorch decides per call whether a float32 convolution or matmul may use TF32 (10-bit mantissa inputs on
Ampere and later) from two process-wide switches; cuDNN's is on by default, which made fp32 engines of OCR
models differ from onnxruntime by 1-2.6%. An engine's ``tf32`` setting (BuilderConfig.tf32, off unless asked
for, as in onnxruntime and PyTorch's matmuls) is set around each run and restored after, so two engines of
different settings in one process each get theirs. (Kernels choose at launch, so restoring after an
asynchronous launch is safe; CUDA graphs record the kernels chosen at capture.)
"""
from __future__ import annotations

import contextlib
import threading

import torch

_LOCK = threading.RLock()  # the switches are process-wide: one engine's run sets them at a time


@contextlib.contextmanager
def float32_precision(device: torch.device, tf32: bool):
    if device.type != "cuda":
        yield
        return
    with _LOCK:
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
