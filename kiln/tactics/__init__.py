"""Tactics: the candidate implementations of a layer, as data and as kernels.

- ``choice.py``: ``Choice`` (a tactic name and its params: what an engine stores, a timing cache records and
  a replay file lists) and ``NotApplicable``.
- ``library.py``: ``TacticLibrary``, the space as one immutable object (``Row``s of candidates per layer kind,
  a factory per tactic name, ``triton_on_cpu``: whether Triton tactics are offered for CPU tensors, in Triton's
  interpreter); ``kiln.build(..., tactics=library)`` builds and binds with another one.
- ``space.py``: Kiln's own table and factories (cuDNN, cuBLASLt, SDPA, oneDNN, the Triton layers), each
  layer's default, and ``DEFAULT``, their library.
- ``quantized.py``: the 8-bit tactics of kiln::QLinear / kiln::QConv (int8/fp8 GEMMs, fp8 convolutions, the
  float16 cuDNN path); ``qconv.py``: the Triton implicit-GEMM convolution of kiln::QConv.
- ``bind.py``: at engine load, each layer's stored choice made into its kernel (``bind_tactics``).

The engine imports this package to load a file; the tuner (kiln/tune) imports it to time the candidates.
It imports neither of them, nor the builder, the passes or the quantizer (tests/test_imports.py).
"""
from .bind import bind_tactics
from .choice import TORCH, Choice, NotApplicable
from .library import Row, TacticLibrary, triton_factory
from .space import DEFAULT, FACTORIES, SPACE, candidates, default_choice, make

__all__ = ["bind_tactics", "TORCH", "Choice", "NotApplicable", "Row", "TacticLibrary", "triton_factory", "DEFAULT",
           "FACTORIES", "SPACE", "candidates", "default_choice", "make"]
