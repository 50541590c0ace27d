"""Tactics: the candidate implementations of a layer, as data and as kernels.

- ``space.py``: the table of candidates per layer kind (``SPACE``: name, params, device, minimum optimization
  level), ``Choice`` (what an engine stores, a timing cache records and a replay file lists), the factories
  that make a choice into a kernel (``make``; cuDNN, cuBLASLt, SDPA, oneDNN, the Triton layers) and each
  layer's default.
- ``quantized.py``: the 8-bit tactics of kiln::QLinear / kiln::QConv (int8/fp8 GEMMs, fp8 convolutions, the
  float16 cuDNN path); ``qconv.py``: the Triton implicit-GEMM convolution of kiln::QConv.
- ``bind.py``: at engine load, each layer's stored choice made into its kernel (``bind_tactics``).

The engine imports this package to load a file; the tuner (kiln/tune) imports it to time the candidates.
It imports neither of them, nor the builder, the passes or the quantizer.
"""
from .bind import bind_tactics
from .space import FACTORIES, SPACE, TORCH, Choice, NotApplicable, candidates, default_choice, make

__all__ = ["bind_tactics", "FACTORIES", "SPACE", "TORCH", "Choice", "NotApplicable", "candidates", "default_choice",
           "make"]
