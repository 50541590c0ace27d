"""Binding: a graph made runnable on one device, before any Program is made from it.

``bind`` moves the constants to the device once (``bind_constants``) and makes each layer's stored tactic choice
(``node.meta["tactic"]``, else its default) into a kernel for that device (kiln/tactics/bind.py). The result is a
:class:`Binding`. Loading a file binds in ``Engine.__init__``; a build binds once, in its lowering
(kiln/builder/lower.py), because its decisions depend on the bound kernels (which layers write into a given
buffer), and hands the same binding to the Engine it constructs last.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir.graph import Graph
from ..ops import Registry
from .placement import host_constants


@dataclass(frozen=True)
class Binding:
    """A graph's constants and tactics bound on one device.

    Attributes:
        device: where the constants live and the tactics run.
        constants: value id -> tensor, every constant of the graph and its subgraphs.
        tactics: node -> the tactic replacing its op's own kernel (an object with ``name`` and ``kernel``).
        choices: layer label -> the ``kiln.tactics.Choice`` made, for every layer with a tactic space.
        notes: what binding replaced (a stored tactic not available on this device, and what runs instead).
    """

    device: torch.device
    constants: dict
    tactics: dict
    choices: dict
    notes: tuple[str, ...] = ()


def resolve_device(name: str) -> torch.device:
    """The torch device an engine configured for ``name`` runs on: "cuda" without an index is the current
    GPU (GPU 0 on a machine without one)."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device


def bind(graph: Graph, device: torch.device, registry: Registry | None = None, library=None) -> Binding:
    """Bind ``graph`` on ``device``: constants there once, and each layer's tactic made from its stored choice
    with ``library`` (a kiln.tactics.TacticLibrary; default: Kiln's own)."""
    constants = bind_constants(graph, device, registry)
    # Device-specific implementations made now, from each layer's stored choice (the tuner's, kept in
    # node.meta["tactic"]) or its default: the file keeps the plain weights and plain data.
    from ..tactics import bind_tactics
    notes: list[str] = []
    choices: dict = {}
    tactics = bind_tactics(graph.nodes, constants, device, notes, choices, library)
    return Binding(device, constants, tactics, choices, tuple(notes))


def bind_constants(graph: Graph, device: torch.device, registry: Registry | None = None) -> dict[int, torch.Tensor]:
    """Every constant moved to the device once; NHWC convolution weights stored channels-last; on the GPU,
    small integer constants of the main graph, and those of bodies read only as Python values, stay on the host,
    pinned (see placement.py)."""
    nhwc = {n.inputs[1].id for g in graph.walk_graphs() for n in g.nodes
            if n.domain == "kiln" and n.op_type == "Conv" and n.attrs.get("channels_last")}
    out = {}
    on_host = host_constants(graph, registry) if device.type == "cuda" else set()
    for g in graph.walk_graphs():
        for v in g.constants.values():
            if v.id in on_host:
                out[v.id] = v.const.pin_memory()
                continue
            t = v.const.to(device)
            if v.id in nhwc and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            out[v.id] = t
    return out
