"""The op library: one module per op family, each exposing an OpSet named ``ops``.

The default registry is built from this explicit list; adding a family means adding it here. Fused layers'
epilogue steps and elementwise programs are records of ``fused_steps`` (the place to add a step).
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
