"""Lowering: the optimized graph and the tuner's choices become a Plan (plan.py) bound on the device.

``lower(graph, choices, device, registry, tactics)`` records each layer's tactic choice on its node, binds the
graph on the device once (kiln/engine/binding.py: constants there, tactics made) and says, per layer, where it
runs and whether its kernel writes into a given buffer. The steps over the plan follow (concat_in_place.py,
memory_plan.py), then the Engine is built from it (builder.py). ``describe_layers`` and ``kernel_name`` name
each layer's kernel for the build report.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..engine.binding import bind
from ..engine.placement import plan_placement
from ..engine.program import accepts_out, layer_kernel
from ..engine.report import LayerInfo
from ..ir.graph import Graph, Node
from ..ir.types import TensorType
from ..ops import Registry
from ..passes.propagate import Facts
from .plan import Layer, Plan


def lower(graph: Graph, choices: Mapping[str, dict], device: torch.device, registry: Registry,
          tactics: Any = None) -> Plan:
    """The plan of ``graph`` on ``device``: ``choices`` ({layer label: tactic choice JSON}, the tuner's; layers
    not named keep their default) are stored on the nodes (``node.meta["tactic"]``, what the file keeps), the
    graph is bound with the tactic library ``tactics`` (default: Kiln's own), and each layer says where it runs
    and whether its kernel computes into a given buffer (``accepts_out``)."""
    for n in graph.nodes:
        if n.label in choices:
            n.meta["tactic"] = choices[n.label]
    binding = bind(graph, device, registry, tactics)
    host_nodes = plan_placement(graph, registry).host_nodes if device.type == "cuda" else set()
    host = torch.device("cpu")
    layers = []
    for n in graph.nodes:
        on_host = id(n) in host_nodes
        kernel, tactic = layer_kernel(n, registry, binding.tactics, on_host)
        layers.append(Layer(n, on_host, "" if tactic is None else tactic.name,
                            accepts_out(kernel, host if on_host else device)))
    return Plan(graph, tuple(layers), binding, registry)


def kernel_name(node: Node, registry: Registry) -> str:
    """The layer's kernel as the build report names it: the op's label rule (kiln::Conv's "torch.conv2d+bias"),
    else "kiln.Op" for Kiln's own ops and "family.Op" for ONNX and com.microsoft ops."""
    label = registry.traits(node.domain, node.op_type).label
    if label is not None:
        return label(node)
    if node.domain == "kiln":
        return f"kiln.{node.op_type}"
    family = registry.families.get((node.domain or "", node.op_type), "?")
    return f"{family}.{node.op_type}"


def precision(node: Node, facts: Facts) -> str:
    if "precision" in node.meta:  # quantized layers: their arithmetic, not their float output type
        return node.meta["precision"]
    for o in node.outputs:
        if o is not None:
            t = facts.type_of(o)
            if isinstance(t, TensorType) and t.dtype is not None:
                return t.dtype.short
    return "?"


def describe_layers(graph: Graph, facts: Facts, registry: Registry) -> list[LayerInfo]:
    layers = []
    for n in graph.nodes:
        shapes = []
        for o in n.outputs:
            t = facts.type_of(o) if o is not None else None
            shapes.append(list(t.shape) if isinstance(t, TensorType) and t.shape is not None else None)
        op = f"{n.domain}::{n.op_type}" if n.domain else n.op_type
        layers.append(LayerInfo(n.label, op, list(n.meta.get("covers", [n.label])), kernel_name(n, registry),
                                precision(n, facts), shapes))
    return layers
