"""The op library: one module per op family, each exposing an OpSet named ``ops``.

An op is added in its family's module, ``@ops.op("Name", infer=..., check=..., elementwise=..., ...)``: its kernel,
type rule, attribute check and traits (``registry.Traits``) in one place; passes, placement and lowering ask the
registry for traits (``ops_with``, ``traits``) instead of keeping lists of names. A family may be split into
sibling modules whose OpSets it merges (elementwise + elementwise_logic, shape + shape_pad/shape_make, index +
index_unique); modules without an OpSet (``attention_linear``, ``conv_padding``, ``shape_util``, ...) hold
kernels and helpers that a family module registers or uses.

- ``registry.py``: OpDef, Traits, OpSet, Registry, KernelContext, InferContext (the kernel contract).
- ``FAMILIES`` below: the default registry is built from this explicit list; adding a family means adding it
  here. Nothing registers itself globally on import, and no module but its own edits a registry
  (tests/test_registry_mutation.py): plugins make a new one (``extended_registry``, kiln/plugin).
- ``not_supported.py``: standard ops left out on purpose, each with its reason.
- ``fused.py``: Kiln's fused layers (domain ``kiln``); ``fused_steps.py``: their epilogue steps and
  elementwise programs as records (the place to add a step); ``fused_cpu.py``: their oneDNN kernels.
- ``contrib_ms*.py``: onnxruntime's com.microsoft ops; ``onnxruntime_node.py``: the opt-in onnxruntime fallback.
"""
from __future__ import annotations

import functools

from . import (activation, attention, cast, contrib_ms, contrib_ms_attention, contrib_ms_gqa, contrib_ms_quant,
               control, conv, detection, elementwise, fused, index, linalg, loss, norm, onnxruntime_node, pool, quant,
               quantized, reduce, resample, rnn, sequence, shape, signal)
from .not_supported import NOT_SUPPORTED
from .registry import InferContext, KernelContext, OpDef, OpSet, Registry, Traits

FAMILIES = (elementwise, activation, cast, reduce, norm, loss, linalg, conv, pool, quant, shape, index, resample,
            attention, detection, control, sequence, rnn, signal, fused, quantized, onnxruntime_node,
            contrib_ms, contrib_ms_attention, contrib_ms_gqa, contrib_ms_quant)  # onnxruntime's com.microsoft domain


@functools.cache
def default_registry() -> Registry:
    return Registry((m.ops for m in FAMILIES), NOT_SUPPORTED)


def extended_registry(extra) -> Registry:
    """Kiln's registry plus the OpSets in ``extra`` (plugins: kiln.plugin); an op defined twice is an error."""
    return Registry([*(m.ops for m in FAMILIES), *extra], NOT_SUPPORTED)


__all__ = ["OpDef", "OpSet", "Registry", "Traits", "KernelContext", "InferContext", "default_registry", "extended_registry", "FAMILIES"]
