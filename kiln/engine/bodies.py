"""Running If/Loop/Scan bodies inside a GPU engine with host placement (placement.plan_body_placement).

The interpreter runs bodies node by node on the engine's device. On a GPU that is not enough: a body's Shape
made its result on the device from a host list (a pageable copy, refused inside CUDA graph capture) and its
Reshape then read that result back as Python ints (a synchronization). ``BodyRunner`` runs the body layers that
plan_body_placement put on the host with a CPU context, copies host values that device layers read as data from
pinned memory (host constants: a device twin made once), and hands the caller device tensors, as the main
graph's steps do (program.py), except the outputs its callers read as Python values (``host_outputs``).
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
    def __init__(self, graph: Graph, device: torch.device, registry: Registry, constants: dict[int, torch.Tensor],
                 placement: Placement | None):
        super().__init__(graph, device, registry)
        self._consts = constants
        self.placement = placement
        # Per thread: the host buffers the run in progress copies from, which a CUDA graph capture keeps alive.
        self._keep = threading.local()
        # Host constants that body layers read as data get one device twin, made now: a Loop body would
        # otherwise copy them on every iteration.
        self._twins: dict[tuple[int, int], torch.Tensor] = {}
        if placement is not None:
            nodes = {id(n): n for g in graph.walk_graphs() if g is not graph for n in g.nodes}
            for nid, slots in placement.moves.items():
                for j in slots:
                    v = nodes[nid].inputs[j]
                    if v.id in constants:
                        self._twins[(nid, j)] = constants[v.id].to(device)

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
                twin = self._twins.get((id(node), j))
                if twin is not None:
                    args[j] = twin
                elif isinstance(args[j], torch.Tensor):
                    args[j] = to_device(args[j], self.device, getattr(self._keep, "list", None))
        return super()._run_node(node, args, env)

    def run_graph(self, graph: Graph, env: dict[int, Any], free: bool = False) -> list[Any]:
        outs = super().run_graph(graph, env, free)
        if self.placement is None:
            return outs
        keep, stay = getattr(self._keep, "list", None), self.placement.host_outputs
        return [to_device(x, self.device, keep) if isinstance(x, torch.Tensor) and v.id not in stay else x
                for v, x in zip(graph.outputs, outs)]
