"""Running If/Loop/Scan bodies inside a GPU engine with host placement (placement.plan_body_placement).

The interpreter runs bodies node by node on the engine's device. On a GPU that is not enough: a body's Shape
made its result on the device from a host list (a pageable copy, refused inside CUDA graph capture) and its
Reshape then read that result back as Python ints (a synchronization). ``BodyRunner`` runs the body layers that
plan_body_placement put on the host with a CPU context, copies host values that device layers read as data from
pinned memory, and hands the caller device tensors only, as the main graph's steps do (program.py).
"""
from __future__ import annotations

import threading
from typing import Any

import torch

from ..ir.graph import Graph, Node
from ..ops import Registry
from ..runtime.interpreter import Interpreter
from .placement import Placement, to_device

_HOST = torch.device("cpu")


class BodyRunner(Interpreter):
    def __init__(self, graph: Graph, device: torch.device, registry: Registry, placement: Placement | None):
        super().__init__(graph, device, registry)
        self.placement = placement
        # Per thread: the host buffers the run in progress copies from, which a CUDA graph capture keeps alive.
        self._keep = threading.local()

    def keep_copies_in(self, keep: list | None) -> None:
        """Collect this thread's pinned copies in ``keep`` (None: the run is not being captured)."""
        self._keep.list = keep

    def node_device(self, node: Node) -> torch.device:
        if self.placement is not None and id(node) in self.placement.host_nodes:
            return _HOST
        return self.device

    def _run_node(self, node: Node, args: list, env: dict[int, Any]) -> list:
        if self.placement is not None:
            for j in self.placement.moves.get(id(node), ()):
                if isinstance(args[j], torch.Tensor):
                    args[j] = to_device(args[j], self.device, getattr(self._keep, "list", None))
        return super()._run_node(node, args, env)

    def run_graph(self, graph: Graph, env: dict[int, Any], free: bool = False) -> list[Any]:
        outs = super().run_graph(graph, env, free)
        if self.placement is None:
            return outs
        keep = getattr(self._keep, "list", None)
        return [to_device(x, self.device, keep) if isinstance(x, torch.Tensor) else x for x in outs]
